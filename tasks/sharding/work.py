"""The body of one shard, shared by the in-process task and the shard deployment's flow: fetch the
inputs, load the model once per thread (``tasks.sharding.model_cache``), build batches, run the
shard kind's step (``STEPS``: one gdig_core call each), write the output atomically and then its
sidecar. No method logic lives here."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdig_core.config import GdigConfig
from tasks.caching.stage_keys import stage_calls
from tasks.runtime import artifacts
from tasks.runtime.faults import inject, kill_point, with_oom_backoff
from tasks.runtime.gpu_slots import gpu_slot
from tasks.sharding import storage
from tasks.sharding.influence_calls import score_shard_call
from tasks.sharding.jobs import ShardJob, ShardKind, mark_done
from tasks.sharding.model_cache import loaded_model
from tasks.sharding.result_store import publish_segment


def cache_root() -> Path:
    """Where a worker keeps inputs fetched from remote shared storage."""
    return Path(os.environ.get("GDIG_WORKER_CACHE", Path(tempfile.gettempdir()) / "gdig-worker-cache"))


@dataclass
class ShardContext:
    """What a step works with: the stage's calls, the loaded model and its tracked layers, the
    job's fetched inputs and where its output (and gradient segment) goes on this machine."""

    cfg: GdigConfig
    calls: dict[str, Any]
    model: Any
    tracked: dict[str, Any]
    projection: Any
    inputs: dict[str, Path]
    out: Path
    grad_out: Path | None
    examples: int


def _covariance(ctx: ShardContext, batches: Any) -> dict[str, Any]:
    from gdig_core.influence.curvature import save_stats

    save_stats(ctx.calls["covariance"](ctx.model, batches, ctx.tracked, projection=ctx.projection), ctx.out)
    return {"examples": ctx.examples}


def _lambda(ctx: ShardContext, batches: Any) -> dict[str, Any]:
    from gdig_core.influence.curvature import load_stats, save_stats

    eigen = load_stats(ctx.inputs["eigen"])
    save_stats(ctx.calls["lambda"](ctx.model, batches, ctx.tracked, eigen, projection=ctx.projection), ctx.out)
    return {"examples": ctx.examples}


def _gradients(ctx: ShardContext, batches: Any) -> dict[str, Any]:
    return ctx.calls["capture"](ctx.model, batches, ctx.tracked, out_path=ctx.out)


def _scores(ctx: ShardContext, batches: Any) -> dict[str, Any]:
    return score_shard_call(ctx.cfg, ctx.model, ctx.tracked, batches, ctx.inputs, ctx.out, ctx.grad_out)


@dataclass(frozen=True)
class Step:
    """What one shard kind runs: the stage whose key calls it uses (``tasks.caching.stage_keys``), the
    step itself, and whether its output is a result-store segment (its sidecar lists the rows'
    content keys) rather than a plain shard file."""

    stage: str
    run: Callable[[ShardContext, Any], dict[str, Any]]
    segment: bool


#: Shard kind -> step. Adding a kind touches this table and ``tasks.sharding.jobs.ShardKind``.
STEPS: dict[ShardKind, Step] = {
    "curvature_stats": Step("curvature", _covariance, segment=False),
    "lambda_stats": Step("curvature", _lambda, segment=False),
    "gradients": Step("gradients", _gradients, segment=True),
    "scores": Step("scoring", _scores, segment=True),
}


def run_shard(job: ShardJob) -> dict[str, Any]:
    """One shard, holding a slot of the GPU concurrency limit while it works: the in-process
    shard task and the shard deployment's flow both run this, so GPUs are not oversubscribed
    whoever runs them."""
    orch = GdigConfig.model_validate(job.config).orchestration
    with gpu_slot(orch, f"{job.kind} shard {job.index}"):
        return execute_job(job)


def execute_job(job: ShardJob) -> dict[str, Any]:
    """Compute one shard into ``job.output``; returns a small JSON-able summary.

    The method functions are called through the stage's key calls (``tasks.caching.stage_keys``), so the
    configuration a shard runs with is the one its stage's cache key covers."""
    from gdig_core.influence.hooks import layer_shape

    log = artifacts.logger()
    step = STEPS[job.kind]
    cfg = GdigConfig.model_validate(job.config)
    calls = stage_calls(step.stage, cfg)
    inputs = {k: storage.fetch(v, cache_root()) for k, v in job.inputs.items()}
    model, tokenizer = loaded_model(cfg, str(inputs["checkpoint"]))
    rows = _rows(job, inputs["table"])
    encoded = calls["encode"](tokenizer, rows)
    pad_id = tokenizer.pad_token_id
    tracked = calls["tracked"](model)
    # The gradient store's projection, when the stage fits curvature in its space too.
    projection = calls["projection"]({n: layer_shape(m) for n, m in tracked.items()}) if "projection" in calls else None
    ctx = ShardContext(cfg, calls, model, tracked, projection, inputs, _local_output(job.output),
                       _local_output(job.grad_output) if job.grad_output else None, len(encoded))

    def run(batch_size: int) -> dict[str, Any]:
        inject(job.kind, job.index, batch_size)
        # The batch size halves on OOM.
        return step.run(ctx, calls["batches"].fn(encoded, batch_size, pad_id))

    summary = with_oom_backoff(run, calls["batches"].kwargs["batch_size"], log)
    if step.segment:
        keys = [str(r["id"]) for r in rows]
        if job.grad_output is not None and ctx.grad_out is not None:
            publish_segment(ctx.grad_out, job.grad_output, keys, {})
        publish_segment(ctx.out, job.output, keys, summary)
    else:
        storage.put_file(ctx.out, job.output)  # nothing to copy when written in place
        mark_done(ctx.out, job.output, summary)
    kill_point(job.kind, job.index)
    log.info("%s shard %d: rows %d-%d done", job.kind, job.index, job.start, job.end)
    return summary


def _rows(job: ShardJob, table_path: Path) -> list[dict[str, Any]]:
    from gdig_core.data.pairs import read_pairs

    return read_pairs(table_path).slice(job.start, job.end - job.start).to_pylist()


def _local_output(location: str) -> Path:
    return storage.local_path(location) or cache_root() / "out" / Path(location).name
