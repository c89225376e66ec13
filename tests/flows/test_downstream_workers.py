"""The downstream grid on real workers: a ``prefect server`` on a loopback port, the deployments of
prefect.yaml on a process pool, and the pipeline dispatching each cell (a finetune on one
selection with one seed, then its evaluation) as a flow run of ``gdig-downstream``. Its outputs
must be the local run's under the same keys; a worker killed mid-cell must cost a bounded wait,
a failed run naming the cell, and a rerun that computes only that cell."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from prefect_fixtures import (
    PROJECT_ROOT,
    copy_run,
    deploy_all,
    pipeline_cmd,
    run_pipeline,
    selected_ids,
    start_worker,
    stop,
    worker_env,
)

UPSTREAM = ["data", "base-model", "reference", "curvature", "precondition", "scoring", "selection"]
#: Four cells: two methods, two finetuning seeds (no zero-shot cell).
GRID = ["selection.methods=[gdig, random]", "finetune.seeds=[0, 1]", "evaluation.zero_shot=false",
        "orchestration.gpu_concurrency_limit=gpu-cells-test", "orchestration.gpu_slots=4"]
#: Report sections that say where and how long things ran, or print the config: not results.
_RUN_SECTIONS = ("Time per stage", "Downstream cells", "Cost of each method", "Command", "Configuration")


def _dispatch(shared: Path) -> list[str]:
    return [*GRID, "orchestration.downstream_mode=deployment", f"orchestration.shared_storage={shared}",
            "orchestration.max_workers=2", "orchestration.retries=0", "orchestration.heartbeat_seconds=1",
            "orchestration.lost_after_seconds=10"]


def _keys(run_dir: Path) -> dict[str, list[str]]:
    return {stage: sorted(p.name for p in (run_dir / "cas" / stage).iterdir() if not p.name.startswith("."))
            for stage in ("finetune", "evaluation")}


def _results(run_dir: Path) -> tuple[str, list[str]]:
    """The comparison table, and the report's sections less those about where things ran."""
    report = run_dir / "report"
    sections = (report / "report.md").read_text(encoding="utf-8").split("\n## ")
    return (report / "comparison.csv").read_text(encoding="utf-8"), [s for s in sections
                                                                       if not s.startswith(_RUN_SECTIONS)]


def _kill_worker_mid_cell(worker, shared: Path, deadline: float) -> str:
    """Wait until the worker runs a cell (its heartbeat names a process of the worker), then kill
    the worker and everything it started, as when its machine dies; returns the cell's flow run id."""
    while time.time() < deadline:
        family = {p.pid: p for p in psutil.Process(worker.proc.pid).children(recursive=True)}
        for beat in (shared / "cells").glob("*.heartbeat"):
            try:
                content = json.loads(beat.read_text())
            except (OSError, ValueError):
                continue
            if content.get("pid") in family:
                for p in [*family.values(), psutil.Process(worker.proc.pid)]:
                    p.kill()
                worker.proc.wait(30)
                return content["flow_run"]
        time.sleep(0.2)
    raise AssertionError(f"{worker.name} never ran a cell")


@pytest.mark.slow
def test_cells_on_two_workers_match_local_and_a_killed_worker_costs_one_cell(
    prefect_server, baseline_run, tmp_path: Path
) -> None:
    env = worker_env(prefect_server)
    assert "gdig-downstream/gdig-downstream" in deploy_all(env)

    # The local-mode run the dispatched ones must match.
    local_dir = copy_run(baseline_run.run_dir, tmp_path / "local", UPSTREAM)
    local = run_pipeline(prefect_server, local_dir, GRID)
    assert local.returncode == 0, local.output[-4000:]
    cells = len(local.events("cell_computed"))
    assert cells == 4, local.events("cell_computed")

    # 1. Two workers run the grid: both take cells; same keys, selections, metrics and report.
    run_dir = copy_run(baseline_run.run_dir, tmp_path / "dispatched", UPSTREAM)
    workers = [start_worker(env, name, tmp_path) for name in ("worker-a", "worker-b")]
    try:
        run = run_pipeline(prefect_server, run_dir, _dispatch(tmp_path / "shared"))
    finally:
        for w in workers:
            stop(w.proc)
    assert run.returncode == 0, run.output[-6000:]
    assert len(run.events("cell_computed")) == cells
    assert len(list((tmp_path / "shared" / "cells").glob("*.tar.done.json"))) == cells
    for w in workers:
        assert "Flow run 'cell-" in w.log.read_text(), w.log.read_text()[-3000:]
    assert _keys(run_dir) == _keys(local_dir)
    assert selected_ids(run_dir) == selected_ids(local_dir)
    assert _results(run_dir) == _results(local_dir)
    assert "| cell-" in (run_dir / "report" / "report.md").read_text()  # each cell's own flow run

    # 2. A worker dies mid-cell: its run stays "Running" on the server, but its heartbeat stops,
    #    so the pipeline gives up on it within lost_after_seconds (retries=0 here), lets the other
    #    cells finish on the other worker and fails naming the cell.
    kill_dir = copy_run(baseline_run.run_dir, tmp_path / "killed", UPSTREAM)
    shared = tmp_path / "shared-kill"
    steady = start_worker(env, "worker-c", tmp_path)
    doomed = start_worker(env, "worker-d", tmp_path, GDIG_FAULTS=json.dumps({"delay": 600}))
    try:
        proc = subprocess.Popen(pipeline_cmd(kill_dir, _dispatch(shared)), env=prefect_server.env(),
                                cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        _kill_worker_mid_cell(doomed, shared, time.time() + 300)
        started = time.time()
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode != 0, output[-4000:]
        assert time.time() - started < 240, "the pipeline hung on the lost cell"
        assert f"1 of {cells} cells failed after retries: cell " in output, output[-4000:]
        assert "wrote no heartbeat" in output, output[-4000:]

        # 3. The rerun computes only that cell; the finished ones are taken as they are.
        rerun = run_pipeline(prefect_server, kill_dir, _dispatch(shared))
    finally:
        for w in (steady, doomed):
            stop(w.proc)
    assert rerun.returncode == 0, rerun.output[-6000:]
    assert len(rerun.events("cell_computed")) == 1
    assert len(rerun.events("cell_skipped")) == cells - 1
    assert _keys(kill_dir) == _keys(local_dir)
    assert _results(kill_dir) == _results(local_dir)
