"""Run-level chores: the stable paths users look for
(``<run_dir>/selection/<method>/b<budget>/``, ``<run_dir>/report/``, ``<run_dir>/outputs.json``).

``outputs.json`` is the index of the latest run: ``gdig explain`` and the published report read
only the selections it lists. A selection an earlier config left under ``selection/`` (another
method or budget) stays where it is, is listed under ``stale_selections`` and gets a
:data:`STALE_MARKER` file saying so; the published report names them too."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from gdig_core.integrity import hashing_stats
from gdig_core.io import atomic_write_json, atomic_write_text
from gdig_core.names import inside
from gdig_core.selection.layout import ROOT, selection_dirs, selection_subdir
from gdig_core.write_faults import writing
from tasks.caching.stage_cache import StageOutput
from tasks.runtime.records import record


def _mirror(src: Path, dst: Path) -> None:
    """Replace ``dst`` with a copy of ``src`` (small files: selections and reports)."""
    tmp = dst.with_name(dst.name + ".tmp")
    with writing(dst):
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("_manifest.json"))
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)


#: Written into each selection directory the latest run did not produce.
STALE_MARKER = "STALE.txt"


def _stale_selections(root: Path, current: set[Path]) -> list[Path]:
    """Selection directories under ``<run_dir>/selection`` that this run did not write."""
    return [d for _, _, d in selection_dirs(root / ROOT) if d.resolve() not in current]


def _mark_stale(stale: list[Path], when: str) -> None:
    for d in stale:
        atomic_write_text(d / STALE_MARKER, f"Stale: the run of {when} did not write this selection (its config has "
                          "another method or budget). The latest run's selections are listed in "
                          "outputs.json (selected); gdig explain and the report leave this one out.\n")


def _note_stale_in_report(report_md: Path, root: Path, stale: list[Path]) -> None:
    if not stale or not report_md.is_file():
        return
    listed = "\n".join(f"- `{d.relative_to(root).as_posix()}`" for d in stale)
    text = report_md.read_text(encoding="utf-8").rstrip("\n")
    atomic_write_text(report_md, f"{text}\n\n## Stale selections\n\nUnder `selection/` from an earlier run's config, "
                      f"not part of this report (each holds a `{STALE_MARKER}`):\n\n{listed}\n")


def publish_outputs(
    run_dir: str, data: StageOutput, scores: StageOutput, selections: list[StageOutput], report: StageOutput,
    records: Path, pins: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mirror selections and the report to their stable paths; write ``outputs.json`` (with the
    ``pin:`` section that reuses this run's reference model and factors, for ``gdig pins``)."""
    root = Path(run_dir)
    selected: dict[str, str] = {}
    written: set[Path] = set()
    for sel in selections:
        m, b = sel.summary["method"], sel.summary["budget"]
        sub = inside(root, ROOT, *selection_subdir(m, b, sel.summary.get("kind")).split("/"))
        sub.parent.mkdir(parents=True, exist_ok=True)
        _mirror(Path(sel.dir), sub)
        selected[f"{m}/{sub.name}"] = str(sub / "selected.jsonl")
        written.add(sub.resolve())
    stale = _stale_selections(root, written)
    _mark_stale(stale, time.strftime("%Y-%m-%d %H:%M:%S"))
    report_dir = root / "report"
    _mirror(Path(report.dir), report_dir)
    _note_stale_in_report(report_dir / "report.md", root, stale)
    outputs = {
        "run_dir": str(root),
        "report": str(report_dir / "report.md"),
        "report_png": str(report_dir / "report.png"),
        "selected": selected,
        "scores": str(Path(scores.dir) / "scores"),
        "data": str(Path(data.dir)),
        "records": str(records),
        "pins": pins or {},
        "stale_selections": [str(d) for d in stale],
    }
    atomic_write_json(root / "outputs.json", outputs)
    # What verifying and recording digests cost this process (bench/bench_faults.py reports it).
    record("hashing", "run", **hashing_stats())
    return outputs
