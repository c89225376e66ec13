"""Fuzzing the command line: every verb's arguments (data check, data corrupt, run, rescore, pins,
explain, finetune, evaluate), in process. Rules: tests/fuzz_support.py. Each call ends with status
0, or a refusal: argparse's usage error (status 2) or one ``gdig:`` line naming the cause (status
2; 1 where the verb says nothing to do). Where the arguments pass, the heavy work (the pipeline, a
finetune, an evaluation) is replaced by a stub: the arguments are under test, not the model."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import FUZZ, count, sandbox, traceback_guard
from hypothesis import given
from hypothesis import strategies as st

from gdig_cli.main import main

pytestmark = pytest.mark.timeout(900)


class ReachedWork(Exception):  # noqa: N818 - a stub's signal, not an error
    """A stub's way of saying the arguments passed every check and the real work would start."""


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    from selection_fixtures import blobs, write_run

    from gdig_core.config import SelectionConfig
    from gdig_core.selection import run_selection

    root = tmp_path_factory.mktemp("cli-assets")
    (root / "pool.jsonl").write_text("".join(json.dumps({"src": f"Guten Tag {i}", "tgt": f"Good day {i}"}) + "\n"
                                             for i in range(12)), encoding="utf-8")
    (root / "seed.tsv").write_text("".join(f"Hallo {i}\tHello {i}\n" for i in range(3)), encoding="utf-8")
    (root / "t.de").write_text("eins\nzwei\n", encoding="utf-8")
    (root / "t.en").write_text("one\ntwo\n", encoding="utf-8")
    (root / "cli.yaml").write_text(
        f"name: cli\ndata:\n  data_dir: {root}\n  pool: {{path: pool.jsonl}}\n  seed: {{path: seed.tsv}}\n"
        "evaluation:\n  test_sets: [{name: t, path: t.de, tgt_path: t.en, format: parallel}]\n"
        "selection:\n  budgets: [4]\n  methods: [gdig, random]\n", encoding="utf-8")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (root / "zero.jsonl").symlink_to("/dev/zero")
    (root / "folder").mkdir()
    run = root / "run"
    rng = np.random.default_rng(0)
    scores, pool = write_run(run, rng.standard_normal((20, 4)), blobs(10, 2, 3, 1)[0])
    run_selection(scores, pool, SelectionConfig(budgets=[4], n_clusters=2, methods=["gdig", "random"]),
                  run / "selection", plots=False)
    (run / "run_config.yaml").write_text((root / "cli.yaml").read_text(), encoding="utf-8")
    (run / "outputs.json").write_text(json.dumps({"pins": {}, "selected": {"gdig/b4": "x"}}), encoding="utf-8")
    broken = root / "broken-run"
    broken.mkdir()
    (broken / "outputs.json").write_text("[1, 2", encoding="utf-8")
    listed = root / "list-run"
    listed.mkdir()
    (listed / "outputs.json").write_text("[1, 2]", encoding="utf-8")
    (listed / "run_config.yaml").write_text("- a\n", encoding="utf-8")
    return {"root": str(root), "run": str(run)}


def _stub_work(monkeypatch) -> None:
    def reached(*args, **kwargs):
        raise ReachedWork()

    import gdig_core.evaluation.evaluate
    import gdig_core.training.finetune
    import gdig_core.training.models
    from gdig_cli import run_cmd

    monkeypatch.setattr(gdig_core.training.finetune, "finetune", reached)
    monkeypatch.setattr(gdig_core.evaluation.evaluate, "evaluate_model", reached)
    monkeypatch.setattr(gdig_core.training.models, "build_tiny_model", reached)
    monkeypatch.setattr(run_cmd, "execute_pipeline", lambda cfg, command, run_dir: {
        "report": "r.md", "report_png": "r.png", "selected": {"gdig/b4": "s.jsonl"}, "scores": "s", "records": "r"})


_TEXT = st.text(st.one_of(st.characters(), st.sampled_from(["\ud800", "\x00", "-", "=", "/", "."])), max_size=12)
_INTS = st.sampled_from(["1", "0", "-1", "4", "7", "99999999999999999999", "x", "nan", "1e3", "", "0x10"])


def _paths(assets: dict[str, str]) -> st.SearchStrategy:
    r = assets["root"]
    return st.sampled_from([f"{r}/pool.jsonl", f"{r}/seed.tsv", f"{r}/t.de", f"{r}/cli.yaml", f"{r}/binary.bin",
                            f"{r}/zero.jsonl", f"{r}/folder", f"{r}/missing.jsonl", assets["run"], f"{r}/broken-run",
                            f"{r}/list-run", "/etc/passwd", "", "-", "out.jsonl", "\udcff.jsonl"]) | _TEXT


def _options(pairs: list[tuple[str, st.SearchStrategy]]) -> st.SearchStrategy:
    """Some of the options, each with a value (or none, for flags), in any order."""
    if not pairs:
        return st.just([])
    one = st.sampled_from(pairs).flatmap(lambda kv: kv[1].map(lambda v: [kv[0]] + ([v] if v is not None else [])))
    return st.lists(one, max_size=4).map(lambda groups: [t for g in groups for t in g])


def _argv(assets: dict[str, str]) -> st.SearchStrategy:
    paths, flag = _paths(assets), st.none()
    cfg = st.sampled_from([f"{assets['root']}/cli.yaml"]) | paths
    sets = st.sampled_from(["selection.budgets=[2]", "selection.tau=2", "data.pool.sample=3", "nope=1", "=",
                            "selection.methods=[oracle]", "evaluation.enabled=false", "data.max_line_bytes=10"])
    common = [("--set", sets), ("--json", flag), ("--bogus", flag)]
    verbs = {
        "data check": (st.lists(paths, min_size=0, max_size=2), [
            ("--tgt-path", paths), ("--format", st.sampled_from(["auto", "jsonl", "tsv", "parquet", "hf", "xml"])),
            ("--src-lang", _TEXT), ("--max-chars", _INTS), ("--max-line-bytes", _INTS), ("--strict", flag),
            ("--json", flag)]),
        # The output is a path the user chose: inside the sandbox, or one the verb must refuse.
        # ``SAME`` stands for the input itself: another asset named as output is the user's own choice
        # to overwrite it (and would spoil the assets the later examples read).
        "data corrupt": (st.tuples(paths, st.sampled_from(["noisy.jsonl", "sub/noisy.jsonl", "", "\x00", ".",
                                                           f"{assets['root']}/folder", "SAME", "\udcff.jsonl"]))
                         .map(lambda io: [io[0], io[0] if io[1] == "SAME" else io[1]]), [
            ("--fraction", st.sampled_from(["0.3", "2", "-1", "x"])), ("--kinds", st.sampled_from(
                ["misaligned", "all", ",", "nope", "low_quality_mt"])), ("--seed", _INTS), ("--third-language", paths),
            ("--mt-hypotheses", paths)]),
        "run": (st.lists(cfg, min_size=0, max_size=1), common),
        "rescore": (st.lists(paths, min_size=0, max_size=1), [("--seed", paths), ("--seed-tgt", paths), *common]),
        "pins": (st.lists(paths, min_size=0, max_size=2), []),
        "explain": (st.tuples(st.sampled_from([assets["run"]]) | paths,
                              st.sampled_from(["c0001", "c0019", "nope", ""]) | _TEXT).map(list), [
            ("--method", st.sampled_from(["gdig", "random", "nope", ""])), ("--budget", _INTS), ("--top", _INTS),
            ("--scores", paths), ("--pool", paths), ("--seed", paths), ("--selection", paths), ("--json", flag)]),
        "finetune": (st.lists(cfg, min_size=0, max_size=1), [
            ("--data", paths), ("--tgt-path", paths), ("--out", st.sampled_from(["out", "sub/dir"])),
            ("--base-model", paths), ("--reference", flag), *common]),
        "evaluate": (st.lists(cfg, min_size=0, max_size=1), [
            ("--model", paths), ("--src", paths), ("--ref", paths), ("--name", _TEXT), ("--test-set", _TEXT),
            ("--out", st.sampled_from(["out", "ev"])), *common]),
    }
    return {verb: st.tuples(st.just(verb.split()), positional, _options(options)).map(lambda t: t[0] + t[1] + t[2])
            for verb, (positional, options) in verbs.items()}


VERBS = ["data check", "data corrupt", "run", "rescore", "pins", "explain", "finetune", "evaluate"]


def _streams() -> tuple[io.TextIOWrapper, io.TextIOWrapper]:
    # As a terminal's: stdout refuses what UTF-8 cannot encode, stderr escapes it.
    return (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict"),
            io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace"))


def _text(stream: io.TextIOWrapper) -> str:
    stream.flush()
    return stream.buffer.getvalue().decode("utf-8")


@pytest.mark.parametrize("verb", VERBS)
@FUZZ
@given(data=st.data())
def test_fuzz_cli_arguments(tmp_path: Path, assets, monkeypatch, verb, data) -> None:
    _stub_work(monkeypatch)
    argv = data.draw(_argv(assets)[verb], label="argv")
    surface = f"cli {verb}"
    with sandbox(tmp_path, surface) as box:
        out, err = _streams()
        cwd = os.getcwd()
        os.chdir(box)  # relative outputs (finetune --out, data corrupt OUTPUT) land in the sandbox
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(argv)
                except SystemExit as exit_:  # argparse: usage and the error
                    rc = exit_.code
                    assert rc == 2 and "error:" in _text(err), (argv, rc)
                    rc = "usage"
                except ReachedWork:
                    rc = 0
        except Exception as error:  # noqa: BLE001 - a traceback the user would see
            traceback_guard(surface, error)
        finally:
            os.chdir(cwd)
        message = _text(err)
        if rc == 0:
            count(surface, "accepted")
        elif rc != "usage":
            assert rc in (1, 2), (argv, rc, message)
            assert message.startswith("gdig:") and "Traceback" not in message, (argv, message)
            count(surface, "refused")
        else:
            count(surface, "refused")
    assert sys.stdout is not out
