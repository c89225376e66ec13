from pathlib import Path

import pytest

from gdig_core.config import ConfigError, GdigConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, GdigConfig)
    assert cfg.selection.budgets


def test_override_sets_nested_values_and_keeps_section_defaults() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["selection.budgets=[10, 20]", "data.pool.sample=50"])
    assert cfg.selection.budgets == [10, 20]
    assert cfg.data.pool.sample == 50
    assert cfg.data.pool.path == "de-en/pool.wmt17-20.jsonl"  # untouched sibling key survives


def test_partial_section_in_yaml_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("curvature:\n  method: kfac\n")
    cfg = load_config(path)
    assert cfg.curvature.method == "kfac"
    assert cfg.curvature.damping_factor == GdigConfig().curvature.damping_factor


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "expected"),
    [
        ("curvature:\n  method: magic\n", [], "curvature.method"),
        ("selection:\n  budgets: [0]\n", [], "selection.budgets"),
        ("selection:\n  tau: 1.5\n", [], "selection.tau"),
        ("scoring:\n  featur_dim: 10\n", [], "scoring.featur_dim"),
        ("", ["reference.train.learning_rate=-1"], "reference.train.learning_rate"),
        ("prompt:\n  template: 'no source here'\n", [], "prompt.template"),
        ("data:\n  pool: {path: x.txt, format: parallel}\n", [], "data.pool"),
    ],
)
def test_invalid_config_names_key_path(tmp_path: Path, yaml_text: str, overrides: list[str], expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_bad_yaml_and_bad_override_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(None, ["selection.tau"])
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_unknown_language_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="prompt.language_names"):
        GdigConfig().language_name("xx")


# ---------------------------------------------------------------- hostile configs (red team, issue 22)


def test_a_duplicate_top_level_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    """A second `selection:` once replaced the first silently: other methods, tau and rule ran."""
    path = tmp_path / "dup.yaml"
    path.write_text("selection:\n  methods: [gdig]\n  tau: 0.5\nname: x\nselection:\n  budgets: [10]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "'selection'" in message and "lines 1 and 5" in message


def test_a_duplicate_nested_key_names_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("data:\n  pool: {path: a.jsonl, sample: 5, sample: 6}\n")
    with pytest.raises(ConfigError, match=r"data\.pool\.sample.*lines 2 and 2"):
        load_config(path)


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """`<<: *anchor` then a key of one's own is YAML's way to override: not a duplicate."""
    path = tmp_path / "merge.yaml"
    path.write_text("reference:\n  train: &t {epochs: 2.0, batch_size: 4}\n"
                    "finetune:\n  train:\n    <<: *t\n    batch_size: 8\n")
    cfg = load_config(path)
    assert cfg.finetune.train.batch_size == 8 and cfg.finetune.train.epochs == 2.0


@pytest.mark.timeout(30)
def test_an_alias_bomb_and_a_recursive_alias_are_refused(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(bomb)
    loop = tmp_path / "loop.yaml"
    loop.write_text("selection: &s\n  budgets: *s\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(loop)


def test_a_config_that_is_not_utf8_or_not_a_file_is_a_config_error(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"name: K\xf6ln\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/zero")


def test_an_override_given_twice_or_with_an_empty_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="selection.tau.*twice"):
        load_config(None, ["selection.tau=0.5", "selection.tau=0.7"])
    for bad in ("=3", "selection..tau=1", ".tau=1"):
        with pytest.raises(ConfigError, match="empty"):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="'a'.*twice"):
        load_config(None, ["selection={a: 1, a: 2}"])
