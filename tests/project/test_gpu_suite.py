"""bench/gpu_suite.py: the GPU command's --tiny mode runs the same code on the CPU, writes every part
as it ends, and a run cut short still reports what finished."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phases_finish_something_each() -> None:
    gs = _suite()
    assert gs.phase_overrides([1000, 2000], 3) == [
        ["selection.budgets=[1000]"],
        ["selection.budgets=[1000,2000]"],
        ["selection.budgets=[1000,2000]", "finetune.seeds=[0,1]"],
        ["selection.budgets=[1000,2000]", "finetune.seeds=[0,1,2]"],
    ]
    assert gs.phase_overrides([500], 1) == [["selection.budgets=[500]"]]


def test_seed_cost_counts_seed_zero_finetunes_and_evaluations(tmp_path: Path) -> None:
    gs = _suite()
    (tmp_path / "records").mkdir()
    events = [("computed", "finetune/gdig/b1000/s0", 20.0), ("computed", "evaluation/gdig/b1000/s0", 30.0),
              ("cached", "finetune/random/b1000/s0", 99.0), ("computed", "evaluation/zero-shot", 50.0),
              ("computed", "finetune/gdig/b1000/s1", 40.0), ("computed", "scoring", 70.0)]
    (tmp_path / "records" / "a.jsonl").write_text(
        "".join(json.dumps({"event": e, "stage": s, "seconds": t, "time": 0}) + "\n" for e, s, t in events))
    assert gs.seed_cost_s(tmp_path) == 50.0


def test_a_failing_part_is_recorded_and_a_failed_phase_still_reports(tmp_path: Path) -> None:
    gs = _suite()
    suite = gs.Suite(tmp_path / "out", 60)
    assert not gs.guarded(suite, "influence", lambda: 1 / 0)
    state = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert state["parts"]["influence"]["error"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in (tmp_path / "out" / "suite.log").read_text()
    (tmp_path / "run").mkdir()
    gs.write_evidence(suite, tmp_path / "run", [{"overrides": ["a"], "status": "failed (exit 1)", "seconds": 3}], {})
    text = (tmp_path / "out" / "evidence.md").read_text()
    assert "| 1 | `a` | failed (exit 1) | 3 |" in text and "## Partial results" in text
    assert json.loads((tmp_path / "out" / "evidence.json").read_text())["partial_rows"] == []


def test_gpu_config_is_the_issue_setting() -> None:
    from gdig_core.config import load_config

    cfg = load_config(ROOT / "configs" / "evidence-de-en-gpu.yaml")
    assert cfg.selection.budgets == [1000, 2000] and cfg.data.seed.sample == 200 and cfg.data.pool.sample is None
    assert cfg.data.noise.fraction == 0.3 and "low_quality_mt" in cfg.data.noise.kinds
    assert [m.name for m in cfg.selection.methods] == ["gdig-paper", "gdig", "random", "cheap", "oracle"]
    cpu = load_config(ROOT / "configs" / "evidence-de-en-cpu.yaml")
    # The best variant is the CPU experiment's "gdig" (its seeds aside), the paper's method is literal.
    same = ("method", "model", "variant", "quality_rule", "tau")
    for name in ("gdig", "gdig-paper"):
        gpu_spec = next(m for m in cfg.selection.methods if m.name == name)
        cpu_spec = next(m for m in cpu.selection.methods if m.name == name)
        assert [getattr(gpu_spec, k) for k in same] == [getattr(cpu_spec, k) for k in same]
    assert cfg.selection.top_k_per_budget * cpu.selection.budgets[0] == cpu.selection.top_k
    assert cfg.model.add_bos and cfg.curvature.autocast == cfg.scoring.autocast == "bfloat16"
    assert [t.path for t in cfg.evaluation.test_sets] == ["de-en/flores.devtest.de"]
    assert cfg.evaluation.test_sets[0].max_sentences is None and cfg.evaluation.max_sentences is None


@pytest.mark.slow
def test_tiny_suite_runs_every_part_and_keeps_partial_results(tmp_path: Path) -> None:
    gs = _suite()
    out, run = tmp_path / "out", tmp_path / "run"
    assert gs.main(["--tiny", "--out", str(out), "--run-dir", str(run), "--max-seeds", "1", "--budget-s", "900"]) == 0
    state = json.loads((out / "suite.json").read_text())
    assert state["parts"]["influence"]["status"] == "ok"
    influence = json.loads((out / "influence.json").read_text())
    assert influence["scoring_vs_train"] > 0 and influence["factor_fit_vs_train"] > 0
    assert "kronfluence_pairwise_vs_train" in influence  # kronfluence is installed with the dev extras
    assert "| our scoring" in (out / "influence.md").read_text()
    phases = state["parts"]["evidence"]["phases"]
    assert [p["overrides"] for p in phases] == [["selection.budgets=[8]"], ["selection.budgets=[8,16]"]]
    assert all(p["status"] == "ok" for p in phases)
    evidence = json.loads((out / "evidence.json").read_text())
    rows = {(r["method"], r["budget"]) for r in evidence["rows"]}
    assert rows == {("zero-shot", 0)} | {(m, b) for m in ("gdig-paper", "gdig", "random", "cheap", "oracle") for b in (8, 16)}
    assert "## Report of the last complete phase (2)" in (out / "evidence.md").read_text()
    assert (out / "evidence.png").stat().st_size > 0
    # The second phase recomputed only what budget 16 adds: data, models and scores were cached.
    from tasks.runtime.records import read_records

    second = read_records(sorted((run / "records").glob("*.jsonl"), key=lambda p: p.stat().st_mtime)[-1])
    computed = {r["stage"] for r in second if r["event"] == "computed"}
    assert computed and all("b16" in s or s == "report" for s in computed), computed

    # A phase cut short: the partial table holds every evaluation finished so far.
    suite = gs.Suite(tmp_path / "cut", 60)
    gs.write_evidence(suite, run, [*phases, {"overrides": ["x"], "status": "timed out after 5 s", "seconds": 5}], {})
    text = (tmp_path / "cut" / "evidence.md").read_text()
    assert "timed out after 5 s" in text and "Partial results" in text and "last complete phase (2)" in text
    partial = json.loads((tmp_path / "cut" / "evidence.json").read_text())["partial_rows"]
    assert {(r["method"], r["budget"]) for r in partial} == rows
