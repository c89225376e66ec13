"""The shard deployment's flow: one shard of curvature statistics or candidate scores, run by a
worker on a GPU work pool. Inputs and the output are paths on shared storage or fsspec URLs;
the pipeline dispatches it with ``run_deployment`` when ``orchestration.shard_mode`` is
``deployment`` (see prefect.yaml and deployments/README.md)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.sharding.jobs import ShardJob
from tasks.sharding.work import run_shard


@flow(name="gdig-shard", persist_result=False, log_prints=True)
def shard_flow(job: ShardJob) -> dict[str, Any]:
    """Compute one shard and write it (then its ``.done.json`` sidecar) to ``job.output``, under
    the same global GPU limit as in-process shards."""
    return run_shard(job)
