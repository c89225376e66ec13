"""Checks before the Prefect server starts (``gdig_core.preflight``): everything that needs only the
config and the data. Bad pool data and a method whose needs the data cannot meet used to surface
28-61 s later, after the server had started, or (the oracle without labels) after scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gdig_core.config import ConfigError, load_config
from gdig_core.preflight import preflight, preflight_problems

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "test-tiny.yaml"


def _pool(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(data_dir: Path, tmp_path: Path, *overrides: str):
    return load_config(TINY, [f"data.data_dir={data_dir}", f"orchestration.run_dir={tmp_path / 'run'}", *overrides])


def test_a_pool_without_one_valid_pair_fails_before_the_server(tmp_path: Path, data_dir: Path) -> None:
    pool = _pool(tmp_path / "pool.jsonl", [{"src": "", "tgt": "x"}, {"src": "a"}])
    problems = preflight_problems(_cfg(data_dir, tmp_path, f"data.pool={{path: {pool}}}"))
    (problem,) = [p for p in problems if p.startswith("data.pool")]
    assert str(pool) in problem and "no valid pairs" in problem and "line 1" in problem


def test_a_bad_seed_row_and_a_bad_pool_row_without_quarantine_name_file_and_line(tmp_path: Path, data_dir: Path) -> None:
    seed = tmp_path / "seed.tsv"
    seed.write_text("eins\tone\nzwei\n", encoding="utf-8")
    pool = _pool(tmp_path / "pool.jsonl", [{"src": "eins", "tgt": "one"}, {"src": "zwei", "tgt": 2}])
    cfg = _cfg(data_dir, tmp_path, f"data.seed={{path: {seed}}}", f"data.pool={{path: {pool}}}",
               "data.quarantine_pool=false")
    text = "\n".join(preflight_problems(cfg))
    assert f"data.seed: {seed}, line 2: expected 2 tab-separated columns" in text
    assert f"data.pool: {pool}, line 2: field 'tgt': must be a string" in text


def test_the_oracle_without_noise_labels_fails_before_any_work(tmp_path: Path, data_dir: Path) -> None:
    cfg = _cfg(data_dir, tmp_path, "selection.methods=[gdig, oracle]", "data.noise=null")
    (problem,) = [p for p in preflight_problems(cfg) if "oracle" in p]
    assert problem.startswith("selection.methods.1 (oracle)") and "noise labels" in problem and "data.noise" in problem
    # With injected noise, or a pool that carries its labels, it may run.
    assert not [p for p in preflight_problems(_cfg(data_dir, tmp_path, "selection.methods=[oracle]",
                                                   "data.noise={fraction: 0.3}")) if "oracle" in p]
    labelled = _pool(tmp_path / "labelled.jsonl", [{"src": f"Satz {i}", "tgt": f"sentence {i}",
                                                    "noise": "clean" if i % 2 else "misaligned"} for i in range(8)])
    assert not [p for p in preflight_problems(_cfg(data_dir, tmp_path, "selection.methods=[oracle]",
                                                   f"data.pool={{path: {labelled}}}")) if "oracle" in p]


def test_gdig_run_refuses_bad_pool_data_without_starting_prefect(tmp_path: Path, data_dir: Path, capsys) -> None:
    from gdig_cli.main import main

    pool = _pool(tmp_path / "pool.jsonl", [{"src": "\ud800", "tgt": "x"}])
    rc = main(["run", str(TINY), "--set", f"data.data_dir={data_dir}", "--set", f"orchestration.run_dir={tmp_path / 'run'}",
               "--set", f"data.pool={{path: {pool}}}"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.pool" in err and "lone UTF-16 surrogate" in err and "Traceback" not in err
    assert not (tmp_path / "run" / ".prefect").exists()


def test_the_real_tiny_config_passes(tmp_path: Path, data_dir: Path) -> None:
    preflight(_cfg(data_dir, tmp_path))
    with pytest.raises(ConfigError, match="data.pool.path"):
        preflight(_cfg(data_dir, tmp_path, f"data.pool.path={tmp_path / 'gone.jsonl'}"))
