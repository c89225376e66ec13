"""Map a stage over shards: skip verified outputs, run the rest in-process or as runs of the shard
deployment, report progress, retry transient failures, and fail with every failed shard's id and
error only after all the others have finished."""

from __future__ import annotations

import sys
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from tqdm import tqdm

from gdig_core.config import OrchestrationConfig
from tasks.runtime import artifacts
from tasks.runtime.faults import TransientError, retry_condition
from tasks.runtime.records import record
from tasks.sharding.dispatch import await_shard_run, check_shard_deployment
from tasks.sharding.jobs import ShardJob, read_done
from tasks.sharding.work import run_shard


class ShardsFailed(RuntimeError):
    """Raised after a shard map finished with failed shards; names each one and its error."""


@task(name="shard", cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_condition)
def run_shard_local(job: ShardJob) -> dict[str, Any]:
    """One shard in this process, holding a slot of the GPU concurrency limit (named in the job's
    config) while it works."""
    return run_shard(job)


@task(name="dispatch-shard", cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_condition)
def run_shard_deployment(job: ShardJob, deployment: str) -> dict[str, Any]:
    """One shard as a run of the shard deployment (picked up by a worker); waits for it, within the
    bounds of ``orchestration.worker_wait_seconds`` and ``shard_timeout_seconds``."""
    from prefect.deployments import run_deployment

    orch = OrchestrationConfig.model_validate(job.config.get("orchestration", {}))
    pool = check_shard_deployment(orch)
    dispatched = run_deployment(
        name=deployment, parameters={"job": job.model_dump(mode="json")}, timeout=0,
        flow_run_name=f"{job.kind}-{job.index:05d}-{job.stage_key[:8]}",
    )
    flow_run = await_shard_run(dispatched, pool, orch, f"{job.kind} shard {job.index}")
    state = flow_run.state
    if state is None or not state.is_completed():
        # Worker lost, crashed or the shard raised: worth another try on any worker.
        raise TransientError(
            f"shard flow run {flow_run.name} ended {state.name if state else 'without state'}: "
            f"{state.message if state else ''}"
        )
    meta = read_done(job.output)
    if meta is None:
        raise TransientError(f"shard flow run {flow_run.name} completed but {job.output} does not verify")
    return meta["summary"]


def _configured(orch: OrchestrationConfig):  # noqa: ANN202
    base = run_shard_deployment if orch.shard_mode == "deployment" else run_shard_local
    return base.with_options(
        retries=orch.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=orch.retry_delay_seconds)(max(orch.retries, 1)),
        retry_jitter_factor=0.2 if orch.retry_delay_seconds else None,
    )


def map_shards(label: str, jobs: list[ShardJob], orch: OrchestrationConfig, note: str = "") -> list[dict[str, Any]]:
    """Run every shard whose output does not yet verify; return all shard summaries in order.
    ``note`` ends the progress artifact's description (the scoring stage: rows reused and new)."""
    log = artifacts.logger()
    summaries: dict[int, dict[str, Any]] = {}
    todo: list[ShardJob] = []
    for job in jobs:
        meta = read_done(job.output)
        if meta is not None:
            summaries[job.index] = meta.get("summary", {})
            record("shard_skipped", label, shard=job.index)
        else:
            todo.append(job)
    total = len(jobs)
    log.info("%s: %d shards, %d already done, %d to run (%s)", label, total, total - len(todo), len(todo), orch.shard_mode)
    key = artifacts.artifact_key(label, "progress")
    tail = f"; {note}" if note else ""
    progress_id = artifacts.progress(key, (total - len(todo)) / total if total else 1.0,
                                     f"{label}: {total - len(todo)}/{total} shards finished{tail}")
    runner = _configured(orch)
    extra = (orch.shard_deployment,) if orch.shard_mode == "deployment" else ()
    futures = {}
    for job in todo:
        named = runner.with_options(task_run_name=f"{label}-shard-{job.index:05d}")
        futures[named.submit(job, *extra)] = job
    failures: list[tuple[ShardJob, BaseException]] = []
    with tqdm(total=total, initial=total - len(todo), desc=label, unit="shard", file=sys.stderr, leave=False) as bar:
        for fut in as_completed(list(futures)):
            job = futures[fut]
            result = fut.result(raise_on_failure=False)
            if fut.state.is_completed():
                summaries[job.index] = result or {}
                record("shard_computed", label, shard=job.index)
            else:
                err = result if isinstance(result, BaseException) else RuntimeError(str(fut.state.message))
                failures.append((job, err))
                record("shard_failed", label, shard=job.index, error=f"{type(err).__name__}: {err}")
                log.error("%s shard %d failed: %s: %s", label, job.index, type(err).__name__, err)
            bar.update(1)
            done = len(summaries) + len(failures)
            artifacts.update_progress(progress_id, done / max(total, 1), f"{label}: {done}/{total} shards finished{tail}")
    if failures:
        detail = "; ".join(f"shard {j.index} (rows {j.start}-{j.end}): {type(e).__name__}: {e}" for j, e in failures)
        # Chained to the first failure: a full disk's OutputWriteError is found there (gdig run's last line).
        raise ShardsFailed(f"{label}: {len(failures)} of {total} shards failed after retries: {detail}") from failures[0][1]
    return [summaries[j.index] for j in jobs]
