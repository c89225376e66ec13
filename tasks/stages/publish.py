"""Run-level chores: the stable paths users look for
(``<run_dir>/selection/<method>/b<budget>/``, ``<run_dir>/report/``, ``<run_dir>/outputs.json``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from gdig_core.integrity import hashing_stats
from gdig_core.io import atomic_write_json
from gdig_core.names import inside
from gdig_core.selection.layout import ROOT, selection_subdir
from tasks.caching.stage_cache import StageOutput
from tasks.runtime.records import record


def _mirror(src: Path, dst: Path) -> None:
    """Replace ``dst`` with a copy of ``src`` (small files: selections and reports)."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("_manifest.json"))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def publish_outputs(
    run_dir: str, data: StageOutput, scores: StageOutput, selections: list[StageOutput], report: StageOutput,
    records: Path, pins: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mirror selections and the report to their stable paths; write ``outputs.json`` (with the
    ``pin:`` section that reuses this run's reference model and factors, for ``gdig pins``)."""
    root = Path(run_dir)
    selected: dict[str, str] = {}
    for sel in selections:
        m, b = sel.summary["method"], sel.summary["budget"]
        sub = inside(root, ROOT, *selection_subdir(m, b, sel.summary.get("kind")).split("/"))
        sub.parent.mkdir(parents=True, exist_ok=True)
        _mirror(Path(sel.dir), sub)
        selected[f"{m}/{sub.name}"] = str(sub / "selected.jsonl")
    report_dir = root / "report"
    _mirror(Path(report.dir), report_dir)
    outputs = {
        "run_dir": str(root),
        "report": str(report_dir / "report.md"),
        "report_png": str(report_dir / "report.png"),
        "selected": selected,
        "scores": str(Path(scores.dir) / "scores"),
        "data": str(Path(data.dir)),
        "records": str(records),
        "pins": pins or {},
    }
    atomic_write_json(root / "outputs.json", outputs)
    # What verifying and recording digests cost this process (bench/bench_faults.py reports it).
    record("hashing", "run", **hashing_stats())
    return outputs
