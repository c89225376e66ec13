"""Deployment mode with bounded waits: the shard deployment must exist and a worker must poll
its pool before the pipeline computes anything, and each shard run must be picked up, and
finish, within configured bounds; every failure says what is missing and how to fix it.

Without these checks a missing deployment failed with ``ObjectNotFound: None`` after the data
and the reference model were computed, and a deployment without a worker waited silently forever.
"""

from __future__ import annotations

import time
from typing import Any

from gdig_core.config import OrchestrationConfig

_POLL_SECONDS = 1.0
_NOTE_EVERY = 30.0


class DeploymentNotReady(RuntimeError):
    """The shard deployment is not registered, or no worker serves its pool in time."""


def _api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "the local ephemeral server")


def check_shard_deployment(orch: OrchestrationConfig) -> str:
    """The work pool of ``orch.shard_deployment``; raises DeploymentNotReady when it is not registered."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = orch.shard_deployment
    if "/" not in name:
        raise DeploymentNotReady(f"orchestration.shard_deployment {name!r}: expected FLOW_NAME/DEPLOYMENT_NAME "
                                 "(e.g. gdig-shard/gdig-shard)")
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise DeploymentNotReady(
                f"the shard deployment {name!r} (orchestration.shard_deployment) is not registered on "
                f"{_api_url()}: register it with `prefect deploy --all` from the project root (prefect.yaml; "
                "see deployments/README.md), or run shards in this process with orchestration.shard_mode=local"
            ) from None
    if not deployment.work_pool_name:
        raise DeploymentNotReady(f"the shard deployment {name!r} has no work pool: redeploy it from prefect.yaml")
    return deployment.work_pool_name


def _online_workers(pool: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus

    with get_client(sync_client=True) as client:
        return [w for w in client.read_workers_for_work_pool(pool) if w.status == WorkerStatus.ONLINE]


def _no_worker_advice(pool: str) -> str:
    return (f"start one on a GPU machine with `prefect worker start --pool {pool}` (PREFECT_API_URL={_api_url()}; "
            "see deployments/README.md), or run shards in this process with orchestration.shard_mode=local")


def wait_for_worker(pool: str, orch: OrchestrationConfig) -> int:
    """Wait (at most ``orch.worker_wait_seconds``) until a worker polls ``pool``; return how many do."""
    from tasks.runtime import artifacts

    start = time.monotonic()
    last_note = -_NOTE_EVERY
    while True:
        online = _online_workers(pool)
        if online:
            return len(online)
        waited = time.monotonic() - start
        if waited >= orch.worker_wait_seconds:
            raise DeploymentNotReady(
                f"no worker is polling work pool {pool!r} after {waited:.0f} s (orchestration.worker_wait_seconds): "
                + _no_worker_advice(pool))
        if waited - last_note >= _NOTE_EVERY:
            artifacts.logger().warning("waiting for a worker on work pool %r (%.0f s of %.0f s): %s",
                                       pool, waited, orch.worker_wait_seconds, _no_worker_advice(pool))
            last_note = waited
        time.sleep(_POLL_SECONDS)


def _cancel(flow_run_id: Any, reason: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelled(message=reason), force=True)


def await_shard_run(flow_run: Any, pool: str, orch: OrchestrationConfig, what: str) -> Any:
    """Wait for a dispatched shard run to end; returns the final flow run.

    Raises DeploymentNotReady when no worker picks it up within ``worker_wait_seconds`` (the run is
    cancelled), and TimeoutError when it runs past ``shard_timeout_seconds`` (cancelled too; the
    caller retries it, as for a lost worker)."""
    from prefect.client.orchestration import get_client

    from tasks.runtime import artifacts

    start = time.monotonic()
    picked_up: float | None = None
    last_note = -_NOTE_EVERY
    while True:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run.id)
        state = run.state
        if state is not None and state.is_final():
            return run
        now = time.monotonic()
        if picked_up is None and state is not None and not state.is_scheduled():
            picked_up = now
        if picked_up is None:
            waited = now - start
            if waited >= orch.worker_wait_seconds:
                reason = (f"{what}: no worker picked up shard run {run.name} within {waited:.0f} s "
                          f"(orchestration.worker_wait_seconds)")
                _cancel(run.id, reason)
                raise DeploymentNotReady(f"{reason}: {_no_worker_advice(pool)}")
            if waited - last_note >= _NOTE_EVERY:
                artifacts.logger().warning("%s: shard run %s waits for a worker on pool %r (%.0f s)", what, run.name,
                                           pool, waited)
                last_note = waited
        elif now - picked_up >= orch.shard_timeout_seconds:
            reason = (f"{what}: shard run {run.name} ran {now - picked_up:.0f} s, past "
                      "orchestration.shard_timeout_seconds (a lost worker leaves a run Running); cancelled")
            _cancel(run.id, reason)
            raise TimeoutError(reason)
        time.sleep(_POLL_SECONDS)
