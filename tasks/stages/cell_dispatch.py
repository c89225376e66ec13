"""A cell as a flow run of the downstream deployment: its job (inputs on shared storage), the run
dispatched and awaited within bounds (``tasks.sharding.dispatch``: a worker must pick it up in
time, and a Running cell whose heartbeat stops is lost, cancelled and retried), then its verified
outputs moved into this run directory's cache. A cell whose outputs a worker already published
(an earlier try, a killed pipeline) is taken from shared storage, and one a killed pipeline's
run is still computing is awaited: neither is computed again."""

from __future__ import annotations

from prefect import task

from gdig_core.config import GdigConfig
from tasks.runtime import artifacts
from tasks.runtime.records import record
from tasks.sharding.dispatch import cell_target, run_on_deployment, running_run
from tasks.sharding.heartbeat import HeartbeatWatch
from tasks.sharding.jobs import read_done
from tasks.stages.cell_jobs import cell_job
from tasks.stages.cell_outputs import import_cell
from tasks.stages.cells import Cell, CellResult, Model, finished_cell
from tasks.stages.common import TASK_OPTS


@task(name="dispatch-cell", **TASK_OPTS)
def dispatch_cell_task(cfg: GdigConfig, run_dir: str, base: Model, cell: Cell) -> CellResult:
    """One cell on the downstream deployment; its outputs end in ``<run_dir>/cas`` under the keys
    a local run gives them."""
    orch = cfg.orchestration
    log = artifacts.logger()
    partial = finished_cell(cfg, run_dir, base, cell)  # its finetune may be here already: then only evaluate
    job = cell_job(cfg, run_dir, base, cell, partial.model)
    meta = read_done(job.output)
    if meta is None:
        # A killed pipeline's cell may still be running on a worker: wait for it, not a second one.
        adopted = running_run(job.heartbeat)
        meta = run_on_deployment(
            cell_target(orch), orch, {"job": job.model_dump(mode="json")}, job.run_name, f"cell {cell.label}",
            job.output, watch=HeartbeatWatch(job.heartbeat, orch.lost_after_seconds), adopt=adopted,
            on_start=lambda run: log.info("cell %s: %s flow run %s (%s)", cell.label,
                                          "waiting for the earlier" if adopted else "dispatched as", run.name, run.id))
    else:
        log.info("cell %s: outputs already on shared storage (%s), from %s", cell.label, job.output,
                 meta.get("summary", {}).get("ran_in"))
    names = import_cell(run_dir, job.output)
    result = finished_cell(cfg, run_dir, base, cell)
    if not result.complete(cfg, cell):
        raise RuntimeError(
            f"cell {cell.label}: {job.output} holds {names}, not the outputs this pipeline's keys expect: the "
            "worker runs another version of gdig, or sees other test sets (see deployments/README.md)")
    ran_in = meta.get("summary", {}).get("ran_in")
    fresh = {out.stage for out in (result.model, result.evaluation)
             if out is not None and f"{out.stage}/{out.key[:24]}" in names}
    for out in (result.model, result.evaluation):
        if out is not None and out.stage in fresh:
            record("computed", out.label or out.stage, key=out.key, seconds=out.seconds, ran_in=ran_in)
    # Computed for this run by a worker, not found in this run's cache: not "cached".
    updates = {"model" if out.stage == "finetune" else "evaluation": out.model_copy(update={"cached": False})
               for out in (result.model, result.evaluation) if out is not None and out.stage in fresh}
    return result.model_copy(update=updates)
