"""The global GPU concurrency limit, in one place: create it, release slots a killed run can never
release, and hold a slot with a bounded, explained wait (``gpu_slot``: every GPU stage task and
every shard, in-process or on a worker, holds one the same way). Its name, slot count, lease and
wait bound are read from ``orchestration`` (``gdig_core.config.OrchestrationConfig``), never
restated here.

Why slots leak: a slot is held under a lease that the Prefect *server* keeps (in memory by
default). With the local ephemeral server, the server is a child of ``gdig run``; killing the run
kills the server and its leases, while the limit's ``active_slots`` count stays in the SQLite
database under ``<run_dir>/.prefect``. No lease is left to expire, so a rerun would wait for that
slot forever. That database serves only this run directory, and the run lock
(``tasks.runtime.run_lock``) guarantees no other run uses it, so every active slot found there at the
start of a run belongs to a dead run and is released.

With a standing server, a killed run's lease stays in the server and expires after
``orchestration.gpu_lease_seconds``; the server's repossessor then frees the slot. Every wait for
a slot is bounded by ``orchestration.gpu_slot_wait_seconds`` and logs what it waits for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gdig_core.config import OrchestrationConfig

#: How often a waiting task re-checks and re-logs (seconds).
_WAIT_CHUNK = 30.0
#: Slots this thread holds: a downstream cell holds one for its finetune and evaluation, whose
#: own ``gpu_slot`` blocks must not take a second (with one slot per GPU that would deadlock).
_HELD = threading.local()


class GpuSlotTimeout(RuntimeError):
    """No slot of the GPU limit became free within ``orchestration.gpu_slot_wait_seconds``."""


def private_local_server(run_dir: str | Path) -> bool:
    """Whether this process talks to an ephemeral server whose database lives in ``run_dir``."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return False
    return Path(settings.home).resolve() == (Path(run_dir).resolve() / ".prefect")


def prepare_gpu_limit(orch: OrchestrationConfig, run_dir: str | Path, at_least: int = 1) -> int:
    """Create the GPU limit unless it exists (an operator's slot count wins); on a run-private
    ephemeral server, release the slots dead runs left held. Returns how many were released.
    ``at_least``: the GPUs this run itself uses at once (local cells, one per GPU), so a limit it
    creates does not serialize them; an existing smaller limit is only warned about."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    from tasks.runtime import artifacts

    log = artifacts.logger()
    name = orch.gpu_concurrency_limit
    slots = orch.gpu_slots or max(orch.max_workers, at_least)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            log.info("created concurrency limit %r with %d slots", name, slots)
            return 0
        if limit.limit < at_least:
            log.warning("concurrency limit %r has %d slot(s), but this run would use %d GPUs at once: it will "
                        "use %d; for all, `prefect gcl update %s --limit %d`", name, limit.limit, at_least,
                        limit.limit, name, at_least)
        stale = limit.active_slots
        if stale and private_local_server(run_dir):
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
            log.warning("released %d slot(s) of concurrency limit %r left held by a killed run of this "
                        "run directory (its leases died with its local Prefect server)", stale, name)
            return stale
    return 0


def _usage(name: str) -> str:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
        return f"{limit.active_slots} of {limit.limit} slots in use"
    except Exception as err:  # noqa: BLE001 - only for the message
        return f"usage unknown: {type(err).__name__}"


def _advice(name: str, lease: float) -> str:
    return (f"other runs hold the GPU, or a run killed less than {lease:.0f} s ago (gpu_lease_seconds) holds its "
            f"slot until the server expires the lease. If no run is using the GPU, free the slots with "
            f"`prefect gcl update {name} --active-slots 0`; for more concurrent GPU work, "
            f"`prefect gcl update {name} --limit N`")


@contextmanager
def gpu_slot(orch: OrchestrationConfig, what: str = "GPU task") -> Iterator[None]:
    """Hold one slot of the GPU limit for the block inside a Prefect run (a no-op outside one, as
    under ``task.fn(...)`` in unit tests, and inside a block of this thread that holds one already)."""
    from prefect.context import FlowRunContext, TaskRunContext

    if (FlowRunContext.get() is None and TaskRunContext.get() is None) or getattr(_HELD, "depth", 0):
        yield
        return
    with hold_gpu_slot(orch, what):
        _HELD.depth = 1
        try:
            yield
        finally:
            _HELD.depth = 0


@contextmanager
def hold_gpu_slot(orch: OrchestrationConfig, what: str) -> Iterator[None]:
    """Hold one slot of the GPU limit for the block; wait at most ``gpu_slot_wait_seconds`` for it,
    logging every 30 s what it waits for."""
    from prefect.concurrency.sync import concurrency

    from tasks.runtime import artifacts

    name, lease, bound = orch.gpu_concurrency_limit, orch.gpu_lease_seconds, orch.gpu_slot_wait_seconds
    start = time.monotonic()
    acquired = False
    while True:
        chunk = max(1.0, min(_WAIT_CHUNK, bound - (time.monotonic() - start)))
        try:
            with concurrency(name, occupy=1, lease_duration=lease, strict=False, timeout_seconds=chunk):
                acquired = True
                yield
                return
        except TimeoutError:
            if acquired:  # raised by the block itself, not by the wait
                raise
            waited = time.monotonic() - start
            if waited >= bound:
                raise GpuSlotTimeout(
                    f"{what}: no slot of the GPU concurrency limit {name!r} became free in {waited:.0f} s "
                    f"(orchestration.gpu_slot_wait_seconds; {_usage(name)}): {_advice(name, lease)}"
                ) from None
            artifacts.logger().warning("%s: waiting %.0f s so far for a slot of concurrency limit %r (%s): %s",
                                       what, waited, name, _usage(name), _advice(name, lease))
