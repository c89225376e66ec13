"""Deployment runs with bounded waits, for shards and downstream cells alike: the deployment must
exist and a worker must poll its pool before the pipeline computes anything, and each dispatched
run must be picked up, and finish, within configured bounds; every failure says what is missing
and how to fix it.

Without these checks a missing deployment failed with ``ObjectNotFound: None`` after the data
and the reference model were computed, and a deployment without a worker waited silently forever.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gdig_core.config import OrchestrationConfig
from tasks.runtime.faults import TransientError
from tasks.sharding import storage
from tasks.sharding.heartbeat import HeartbeatWatch
from tasks.sharding.jobs import read_done

_POLL_SECONDS = 1.0
_NOTE_EVERY = 30.0


class DeploymentNotReady(RuntimeError):
    """The deployment is not registered, or no worker serves its pool in time."""


@dataclass(frozen=True)
class Target:
    """A deployment the pipeline dispatches runs to, with the settings that name and bound it
    (quoted in messages)."""

    unit: str  # what one run computes: "shard", "cell"
    deployment: str
    setting: str  # the setting naming the deployment
    local_fix: str  # the setting that runs the work in this process instead
    timeout_seconds: float
    timeout_setting: str


def shard_target(orch: OrchestrationConfig) -> Target:
    return Target("shard", orch.shard_deployment, "orchestration.shard_deployment", "orchestration.shard_mode=local",
                  orch.shard_timeout_seconds, "orchestration.shard_timeout_seconds")


def cell_target(orch: OrchestrationConfig) -> Target:
    return Target("cell", orch.downstream_deployment, "orchestration.downstream_deployment",
                  "orchestration.downstream_mode=local", orch.cell_timeout_seconds, "orchestration.cell_timeout_seconds")


def _api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "the local ephemeral server")


def check_deployment(target: Target) -> str:
    """The work pool of the target's deployment; raises DeploymentNotReady when it is not registered."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = target.deployment
    if "/" not in name:
        raise DeploymentNotReady(f"{target.setting} {name!r}: expected FLOW_NAME/DEPLOYMENT_NAME "
                                 f"(e.g. gdig-{target.unit}/gdig-{target.unit})")
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise DeploymentNotReady(
                f"the {target.unit} deployment {name!r} ({target.setting}) is not registered on "
                f"{_api_url()}: register it with `prefect deploy --all` from the project root (prefect.yaml; "
                f"see deployments/README.md), or run {target.unit}s in this process with {target.local_fix}"
            ) from None
    if not deployment.work_pool_name:
        raise DeploymentNotReady(f"the {target.unit} deployment {name!r} has no work pool: redeploy it from prefect.yaml")
    return deployment.work_pool_name


def check_shard_deployment(orch: OrchestrationConfig) -> str:
    """The work pool of ``orch.shard_deployment`` (DeploymentNotReady when it is not registered)."""
    return check_deployment(shard_target(orch))


def _online_workers(pool: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus

    with get_client(sync_client=True) as client:
        return [w for w in client.read_workers_for_work_pool(pool) if w.status == WorkerStatus.ONLINE]


def _no_worker_advice(pool: str, target: Target | None = None) -> str:
    local = (f"run {target.unit}s in this process with {target.local_fix}" if target is not None
             else "run the work in this process (orchestration.shard_mode / downstream_mode: local)")
    return (f"start one on a GPU machine with `prefect worker start --pool {pool}` (PREFECT_API_URL={_api_url()}; "
            f"see deployments/README.md), or {local}")


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


def await_run(flow_run: Any, pool: str, orch: OrchestrationConfig, target: Target, what: str,
              watch: HeartbeatWatch | None = None) -> Any:
    """Wait for a dispatched run to end; returns the final flow run.

    Raises DeploymentNotReady when no worker picks it up within ``worker_wait_seconds`` (the run is
    cancelled), and TimeoutError when it runs past the target's timeout, or (with a heartbeat
    ``watch``) when it is Running but its heartbeat stopped: a killed worker leaves its run
    "Running" forever. Both are cancelled; the caller retries them, on any worker."""
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
                reason = (f"{what}: no worker picked up {target.unit} run {run.name} within {waited:.0f} s "
                          f"(orchestration.worker_wait_seconds)")
                _cancel(run.id, reason)
                raise DeploymentNotReady(f"{reason}: {_no_worker_advice(pool, target)}")
            if waited - last_note >= _NOTE_EVERY:
                artifacts.logger().warning("%s: %s run %s waits for a worker on pool %r (%.0f s)", what, target.unit,
                                           run.name, pool, waited)
                last_note = waited
        elif now - picked_up >= target.timeout_seconds:
            reason = (f"{what}: {target.unit} run {run.name} ran {now - picked_up:.0f} s, past "
                      f"{target.timeout_setting} (a lost worker leaves a run Running); cancelled")
            _cancel(run.id, reason)
            raise TimeoutError(reason)
        elif watch is not None and state is not None and state.is_running():
            silent = watch.silent_for(str(run.id))
            if silent is not None:
                reason = (f"{what}: {target.unit} run {run.name} is Running but wrote no heartbeat for {silent:.0f} s "
                          f"(orchestration.lost_after_seconds): its worker is gone; cancelled")
                _cancel(run.id, reason)
                raise TimeoutError(reason)
        time.sleep(_POLL_SECONDS)


def running_run(heartbeat: str) -> Any | None:
    """The flow run a heartbeat file names, when the server has it still unfinished: a run that a
    killed pipeline left working. Awaited rather than dispatched again (if it is in fact lost, its
    heartbeat has stopped, and the wait gives up on it within ``lost_after_seconds``)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = UUID(str(json.loads(storage.read_text(heartbeat)).get("flow_run")))
    except (OSError, ValueError, AttributeError):
        return None
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return None
    return run if run.state is not None and not run.state.is_final() else None


def run_on_deployment(target: Target, orch: OrchestrationConfig, parameters: dict[str, Any], run_name: str,
                      what: str, output: str, watch: HeartbeatWatch | None = None,
                      on_start: Callable[[Any], None] | None = None, adopt: Any | None = None) -> dict[str, Any]:
    """Dispatch one run of the target's deployment (or await ``adopt``, a run already working on
    it), wait for it within the bounds, and return the sidecar of its verified ``output``
    (``tasks.sharding.jobs.read_done``). A run that ended in any other state than Completed, or
    whose output does not verify, raises TransientError: worth another try on any worker.
    ``on_start(flow_run)`` learns the run (for logs)."""
    from prefect.deployments import run_deployment

    pool = check_deployment(target)
    dispatched = adopt or run_deployment(name=target.deployment, parameters=parameters, timeout=0,
                                         flow_run_name=run_name)
    if on_start is not None:
        on_start(dispatched)
    flow_run = await_run(dispatched, pool, orch, target, what, watch)
    state = flow_run.state
    if state is None or not state.is_completed():
        # Worker lost, crashed or the run raised: worth another try on any worker.
        raise TransientError(
            f"{target.unit} flow run {flow_run.name} ended {state.name if state else 'without state'}: "
            f"{state.message if state else ''}"
        )
    meta = read_done(output)
    if meta is None:
        raise TransientError(f"{target.unit} flow run {flow_run.name} completed but {output} does not verify")
    return meta
