"""The downstream deployment's flow: one cell (a finetune of the base model on one selection with
one seed, then its evaluation), run by a worker on a GPU work pool. Inputs and outputs are
locations on shared storage; the pipeline dispatches it with ``run_deployment`` when
``orchestration.downstream_mode`` is ``deployment`` (see prefect.yaml and deployments/README.md)."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks.stages.cell_jobs import CellJob
from tasks.stages.cell_worker import execute_cell_job


@flow(name="gdig-downstream", persist_result=False, log_prints=True)
def cell_flow(job: CellJob) -> dict[str, Any]:
    """Compute the cell and write its outputs (then their ``.done.json`` sidecar) to
    ``job.output``, holding a slot of the GPU limit and beating a heartbeat while it works."""
    return execute_cell_job(job, str(flow_run.get_id()))
