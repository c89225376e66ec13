"""Project the downstream grid's wall time on a pool of N GPUs from a committed report's measured
per-cell times: each cell (a finetune and its evaluation, or the zero-shot evaluation alone)
takes what its stages took in the report's "Time per stage" table, cells go longest first to
the GPU that frees up first (how the pool takes them when the pipeline keeps N in flight), plus a
fixed dispatch overhead per cell (a flow run's start on a worker, model loading included;
bench/bench_downstream.py measures it).

    python bench/project_grid.py reports/evidence-de-en-cpu/report.md --gpus 1 8 --overhead 15
    python bench/project_grid.py reports/evidence-de-en-cpu/report.md --gpus 1 8 --overhead 15 --copies 5
"""

from __future__ import annotations

import argparse
import heapq
import re
from pathlib import Path


def stage_seconds(report: Path) -> dict[str, float]:
    """``stage -> seconds`` from the report's "Time per stage" table."""
    text = report.read_text(encoding="utf-8")
    table = text.split("## Time per stage", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| ([0-9.]+) \|$", table, flags=re.M)
    return {stage: float(seconds) for stage, seconds in rows}


def cell_seconds(stages: dict[str, float]) -> dict[str, float]:
    """Cell label -> finetune + evaluation seconds (zero-shot: its evaluation)."""
    cells: dict[str, float] = {}
    for stage, seconds in stages.items():
        kind, _, label = stage.partition("/")
        if kind == "evaluation":
            label = "zero-shot" if label.startswith("zero-shot") else label
            cells[label] = cells.get(label, 0.0) + seconds
        elif kind == "finetune":
            cells[label] = cells.get(label, 0.0) + seconds
    return cells


def makespan(durations: list[float], gpus: int) -> float:
    """Longest-first onto the earliest free GPU."""
    free = [0.0] * gpus
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--overhead", type=float, default=0.0, help="seconds added to every cell (dispatch, model load)")
    ap.add_argument("--copies", type=int, default=1, help="the grid this many times (more seeds or budgets)")
    args = ap.parse_args()
    cells = {f"{label}#{i}" if args.copies > 1 else label: s
             for i in range(args.copies) for label, s in cell_seconds(stage_seconds(args.report)).items()}
    print(f"{len(cells)} cells from {args.report}{f' ({args.copies} copies of its grid)' if args.copies > 1 else ''}:")
    for label, seconds in sorted(cells.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {label:28s} {seconds:8.1f} s")
    durations = [s + args.overhead for s in cells.values()]
    serial = sum(cells.values())
    print(f"\n| GPUs | grid wall time (min) | speedup over the serial grid ({serial / 60:.1f} min) |")
    print("|---|---|---|")
    for n in args.gpus:
        span = makespan(durations, n)
        print(f"| {n} | {span / 60:.1f} | {serial / span:.2f}x |")


if __name__ == "__main__":
    main()
