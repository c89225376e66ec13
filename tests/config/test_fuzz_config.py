"""Fuzzing the config surfaces: YAML files (mutations of a real config, and YAML-ish text) and
``--set`` overrides. Rules: tests/fuzz_support.py. A config either loads, and then says what the
file says (every scalar the file sets is the value the run gets), or is a ConfigError naming the
file and the key path or line; a key given twice is always an error."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_support import FUZZ, count, sandbox, traceback_guard
from hypothesis import given
from hypothesis import strategies as st

from gdig_core.config import ConfigError, GdigConfig, load_config

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "configs" / "test-tiny.yaml").read_text())


def _leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaf_paths(v, (*prefix, str(k)))] or [prefix]
    return [prefix]


KEY_PATHS = sorted({p for p in _leaf_paths(GdigConfig().model_dump(mode="json")) if p})
_HOSTILE = ["\ud800", "\x00", "\x1b", "\t", "\n", "é", ":", "#", "&", "*", "!", "{", "[", "'", '"', "%", "@"]
TEXT = st.one_of(st.text(st.one_of(st.characters(), st.sampled_from(_HOSTILE)), max_size=20),
                 st.sampled_from(["&a", "*a", "!!python/object", "<<", "~", "..", "."]))
SCALAR = st.one_of(st.integers(-3, 10**6), st.floats(allow_nan=True), st.booleans(), st.none(), TEXT,
                   st.sampled_from(["gdig", "ekfac", "cpu", "de", "en", "tiny", "0.5", "1e400", "-1", "true"]))
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=3), st.dictionaries(TEXT, SCALAR, max_size=2))
KEY = st.one_of(st.sampled_from(KEY_PATHS).map(".".join), st.lists(TEXT, min_size=1, max_size=3).map(".".join))
_DEFAULTS = GdigConfig().model_dump(mode="json")


def _default(path: tuple[str, ...]) -> Any:
    node: Any = _DEFAULTS
    for part in path:
        node = node[part]
    return node


def _typed(value: Any) -> st.SearchStrategy:
    """Another value of the default's type: what a user means to set, mostly valid."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(1, 64)
    if isinstance(value, float):
        return st.floats(0.01, 1)
    return st.just(value)


# Edits that set a real key to a value of its type (the config mostly loads, and must then say what
# the file says), and at most one that sets anything at all.
TYPED_EDIT = st.sampled_from(KEY_PATHS).flatmap(lambda p: st.tuples(st.just(".".join(p)), _typed(_default(p))))
EDITS = st.tuples(st.lists(TYPED_EDIT, max_size=3, unique_by=lambda kv: kv[0]),
                  st.lists(st.tuples(KEY, VALUE), max_size=1)).map(lambda t: t[0] + t[1])


def _flow(value: Any) -> str:
    """A value as one would type it after ``--set key=``."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _set(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _config_value(cfg: GdigConfig, path: list[str]) -> Any:
    node: Any = cfg.model_dump(mode="json")
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def _same_scalar(given_value: Any, loaded: Any) -> bool:
    if isinstance(given_value, dict | list) or loaded is KeyError or isinstance(loaded, dict | list):
        return True  # sections and lists are normalised (method names become specs): scalars are checked
    if isinstance(given_value, float) and given_value != given_value:
        return loaded != loaded
    return given_value == loaded


def _outcome(surface: str, run, mentions: list[str]) -> GdigConfig | None:
    try:
        cfg = run()
    except ConfigError as err:
        message = str(err)
        assert any(m in message for m in mentions), (mentions, message)
        count(surface, "refused")
        return None
    except Exception as err:  # noqa: BLE001 - anything else is a traceback the user would see
        traceback_guard(surface, err)
    count(surface, "accepted")
    return cfg


@FUZZ
@given(edits=EDITS, deletions=st.lists(st.sampled_from(sorted(BASE)), max_size=2),
       duplicate=st.one_of(st.none(), st.sampled_from(sorted(BASE))))
def test_fuzz_yaml_config_files(tmp_path: Path, edits, deletions, duplicate) -> None:
    tree = copy.deepcopy(BASE)
    for key in deletions:
        tree.pop(key, None)
    for key, value in edits:
        _set(tree, key.split("."), value)
    with sandbox(tmp_path, "yaml config") as box:
        tree.setdefault("orchestration", {})
        if isinstance(tree["orchestration"], dict):
            tree["orchestration"]["run_dir"] = str(box / "run")
        text = yaml.safe_dump(tree, allow_unicode=False, sort_keys=False)
        if duplicate is not None and duplicate in tree:  # the same section again, as an editor leaves it
            text += yaml.safe_dump({duplicate: tree[duplicate]}, allow_unicode=False)
        path = box / "config.yaml"
        path.write_text(text, encoding="utf-8")
        cfg = _outcome("yaml config", lambda: load_config(path), [str(path)])
        if duplicate is not None and duplicate in tree:
            assert cfg is None, "a section given twice was accepted"
        elif cfg is not None:
            for key, value in edits:
                if key != "orchestration.run_dir" and isinstance(tree.get(key.split(".")[0]), dict):
                    assert _same_scalar(value, _config_value(cfg, key.split("."))), (key, value)


_SNIPPETS = st.sampled_from([
    "a: &x [1, 2]\nb: *x\n", "selection:\n  tau: 0.5\n  tau: 0.6\n", "\t- x\n", "? [a, b]\n: c\n", "!!python/object:os.system x\n",
    "budgets: [1e400]\n", "name: \"\\ud800\"\n", "---\na: 1\n---\nb: 2\n", "x: &a [*a]\n", "selection: null\n",
    "data:\n  pool: 5\n", "<<: {name: x}\n", "name: x\nname: y\n", "\ufeffname: x\n", "%YAML 1.1\n---\nname: x\n",
])


@FUZZ
@given(parts=st.lists(st.one_of(_SNIPPETS, TEXT), max_size=4))
def test_fuzz_yaml_text(tmp_path: Path, parts) -> None:
    with sandbox(tmp_path, "yaml text") as box:
        path = box / "config.yaml"
        path.write_bytes("".join(parts).encode("utf-8", "surrogatepass"))
        _outcome("yaml text", lambda: load_config(path), [str(path)])


@FUZZ
@given(overrides=EDITS.map(lambda kvs: [(k, _flow(v)) for k, v in kvs]),
       raw=st.lists(TEXT, max_size=1))
def test_fuzz_set_overrides(tmp_path: Path, overrides, raw) -> None:
    items = [f"{k}={v}" for k, v in overrides] + raw
    with sandbox(tmp_path, "--set values") as box:
        items.append(f"orchestration.run_dir={box / 'run'}")
        mentions = ["--set", "invalid configuration", *[k.split(".")[0] for k, _ in overrides]]
        cfg = _outcome("--set values", lambda: load_config(None, items), mentions)
        if cfg is not None:
            for key, text in overrides:
                if key.strip() == "orchestration.run_dir":
                    continue  # the harness sets it last (and a repeat is refused)
                value = yaml.safe_load(text)
                path = [p.strip() for p in key.split(".")]
                assert _same_scalar(value, _config_value(cfg, path)), (key, text)
