"""Wall time of the downstream grid: in the pipeline's process (local mode, serial on a CPU) and as
flow runs of the ``gdig-downstream`` deployment on one and on two process workers, in one run.

Starts a ``prefect server`` on a loopback port, registers prefect.yaml's deployments on a process
pool, computes the upstream stages of the tiny config once, then for each finetune length runs the
same grid (two methods x two finetuning seeds = 4 cells, no zero-shot) from copies of that
run directory: locally, then with 1 worker, then with 2. Each grid's time is the span from the
end of the selection stage to its last cell (taken from the run's records); per-cell finetune and
evaluation seconds come from the stages' own timings. On a 2-core CPU the workers' finetunes
share the cores (each torch process uses every core), so this measures whether two cells at once
beat one after the other there, and what a flow run per cell costs over the in-process grid.

    python bench/bench_downstream.py --steps 1 200 --json runs/bench-downstream.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from prefect_fixtures import (  # noqa: E402 - the tests' server and worker helpers
    PipelineRun,
    copy_run,
    deploy_all,
    run_pipeline,
    start_server,
    start_worker,
    stop,
    worker_env,
)

UPSTREAM = ["data", "base-model", "reference", "curvature", "precondition", "scoring", "selection"]
GRID = ["selection.methods=[gdig, random]", "finetune.seeds=[0, 1]", "evaluation.zero_shot=false",
        "orchestration.gpu_concurrency_limit=gpu-bench", "orchestration.gpu_slots=4"]


def _span(run: PipelineRun) -> float:
    """Seconds from the last selection record to the last finished cell."""
    records = run.records()
    start = max(r["time"] for r in records if r["stage"].startswith("selection/"))
    end = max(r["time"] for r in records if r["event"] == "cell_computed")
    return end - start


def _cell_seconds(run: PipelineRun) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"finetune": [], "evaluation": []}
    for r in run.events("computed"):
        stage = r["stage"].split("/", 1)[0]
        if stage in out and r.get("seconds") is not None:
            out[stage].append(float(r["seconds"]))
    return out


def _grid(server: Any, upstream: Path, work: Path, name: str, overrides: list[str], workers: int) -> dict[str, Any]:
    run_dir = copy_run(upstream, work / name, UPSTREAM)
    env = worker_env(server)
    started = [start_worker(env, f"{name}-w{i}", work) for i in range(workers)]
    extra = [] if not workers else [
        "orchestration.downstream_mode=deployment", f"orchestration.shared_storage={work / (name + '-shared')}",
        f"orchestration.max_workers={workers}"]
    load = os.getloadavg()[0]
    try:
        time.sleep(3 if workers else 0)  # workers polling before the first dispatch
        run = run_pipeline(server, run_dir, [*overrides, *extra], timeout=3600)
    finally:
        for w in started:
            stop(w.proc)
    if run.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{run.output[-4000:]}")
    cells = _cell_seconds(run)
    result = {"grid": name, "workers": workers, "cells": len(run.events("cell_computed")),
              "span_s": round(_span(run), 1), "load_1min_before": round(load, 2),
              "finetune_s_median": round(statistics.median(cells["finetune"]), 2),
              "evaluation_s_median": round(statistics.median(cells["evaluation"]), 2)}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 200], help="finetune.train.max_steps per grid")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-downstream")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "prefect-home").mkdir(parents=True)
    server = start_server(args.work / "prefect-home")
    results: list[dict[str, Any]] = []
    try:
        deploy_all(worker_env(server))
        upstream = args.work / "upstream"
        first = run_pipeline(server, upstream, GRID, timeout=3600)
        if first.returncode != 0:
            raise RuntimeError(first.output[-4000:])
        for steps in args.steps:
            overrides = [*GRID, f"finetune.train.max_steps={steps}"]
            grids = [_grid(server, upstream, args.work, f"steps{steps}-{label}", overrides, n)
                     for label, n in (("local", 0), ("1worker", 1), ("2workers", 2))]
            one, two = grids[1]["span_s"], grids[2]["span_s"]
            results.append({"max_steps": steps, "grids": grids, "ratio_2_vs_1_workers": round(two / one, 3),
                            "ratio_1_worker_vs_local": round(one / grids[0]["span_s"], 3)})
    finally:
        stop(server.proc)
    print("\n| finetune steps | local serial s | 1 worker s | 2 workers s | 2 workers / 1 | median finetune s (local, 1w, 2w) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        g = r["grids"]
        print(f"| {r['max_steps']} | {g[0]['span_s']} | {g[1]['span_s']} | {g[2]['span_s']} | {r['ratio_2_vs_1_workers']} "
              f"| {', '.join(str(x['finetune_s_median']) for x in g)} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
