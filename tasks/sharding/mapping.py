"""Map a stage over shards: skip verified outputs, run the rest in-process or as runs of the shard
deployment, report progress, retry transient failures, and fail with every failed shard's id and
error only after all the others have finished. ``with_retries`` and ``gather`` serve the
downstream cells the same way (``tasks.stages.cells``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.tasks import Task, exponential_backoff
from tqdm import tqdm

from gdig_core.config import OrchestrationConfig
from tasks.runtime import artifacts
from tasks.runtime.faults import retry_condition
from tasks.runtime.records import record
from tasks.sharding.dispatch import run_on_deployment, shard_target
from tasks.sharding.jobs import ShardJob, read_done
from tasks.sharding.work import run_shard

T = TypeVar("T")


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
    orch = OrchestrationConfig.model_validate(job.config.get("orchestration", {}))
    target = shard_target(orch.model_copy(update={"shard_deployment": deployment}))
    meta = run_on_deployment(target, orch, {"job": job.model_dump(mode="json")},
                             f"{job.kind}-{job.index:05d}-{job.stage_key[:8]}", f"{job.kind} shard {job.index}",
                             job.output)
    return meta["summary"]


def with_retries(base: Task, orch: OrchestrationConfig) -> Task:
    """``base`` retried ``orchestration.retries`` times on transient errors, with exponential backoff."""
    return base.with_options(
        retries=orch.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=orch.retry_delay_seconds)(max(orch.retries, 1)),
        retry_jitter_factor=0.2 if orch.retry_delay_seconds else None,
    )


def gather(label: str, unit: str, futures: dict[PrefectFuture, T], name: Callable[[T], Any], total: int,
           progress_id: Any = None, tail: str = "") -> tuple[dict[Any, Any], list[tuple[T, BaseException]]]:
    """Wait for every future, whatever the others do: results by ``name(job)``, and the failed
    jobs with their errors. Each outcome is recorded (``<unit>_computed`` / ``<unit>_failed``) and
    logged, and moves a progress bar and the progress artifact ``progress_id`` (``total`` jobs,
    those before these already done)."""
    log = artifacts.logger()
    results: dict[Any, Any] = {}
    failures: list[tuple[T, BaseException]] = []
    before = total - len(futures)
    with tqdm(total=total, initial=before, desc=label, unit=unit, file=sys.stderr, leave=False) as bar:
        for fut in as_completed(list(futures)):
            job = futures[fut]
            result = fut.result(raise_on_failure=False)
            if fut.state.is_completed():
                results[name(job)] = result
                record(f"{unit}_computed", label, **{unit: name(job)})
            else:
                err = result if isinstance(result, BaseException) else RuntimeError(str(fut.state.message))
                failures.append((job, err))
                record(f"{unit}_failed", label, **{unit: name(job)}, error=f"{type(err).__name__}: {err}")
                log.error("%s %s %s failed: %s: %s", label, unit, name(job), type(err).__name__, err)
            bar.update(1)
            done = before + len(results) + len(failures)
            artifacts.update_progress(progress_id, done / max(total, 1), f"{label}: {done}/{total} {unit}s finished{tail}")
    return results, failures


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
    runner = with_retries(run_shard_deployment if orch.shard_mode == "deployment" else run_shard_local, orch)
    extra = (orch.shard_deployment,) if orch.shard_mode == "deployment" else ()
    futures = {}
    for job in todo:
        named = runner.with_options(task_run_name=f"{label}-shard-{job.index:05d}")
        futures[named.submit(job, *extra)] = job
    results, failures = gather(label, "shard", futures, lambda j: j.index, total, progress_id, tail)
    summaries |= {index: result or {} for index, result in results.items()}
    if failures:
        detail = "; ".join(f"shard {j.index} (rows {j.start}-{j.end}): {type(e).__name__}: {e}" for j, e in failures)
        # Chained to the first failure: a full disk's OutputWriteError is found there (gdig run's last line).
        raise ShardsFailed(f"{label}: {len(failures)} of {total} shards failed after retries: {detail}") from failures[0][1]
    return [summaries[j.index] for j in jobs]
