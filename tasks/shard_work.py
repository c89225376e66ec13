"""The body of one shard, shared by the in-process task and the shard deployment's flow: fetch the
inputs, load the model once per thread, build batches, call the gdig_core stage function, write the
output atomically and then its sidecar. No method logic lives here."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from gdig_core.config import GdigConfig
from tasks import artifacts, storage
from tasks.faults import inject, kill_point, with_oom_backoff
from tasks.shards import ShardJob, mark_done

_LOCAL = threading.local()
#: transformers' from_pretrained is not thread-safe (its empty-weights init is process-global).
LOAD_LOCK = threading.Lock()


def cache_root() -> Path:
    """Where a worker keeps inputs fetched from remote shared storage."""
    return Path(os.environ.get("GDIG_WORKER_CACHE", Path(tempfile.gettempdir()) / "gdig-worker-cache"))


def loaded_model(cfg: GdigConfig, path: str) -> tuple[Any, Any]:
    """(model, tokenizer), loaded once per thread: loading can cost a minute (GGUF dequantising),
    and hooks make a model unsafe to share between threads running backward passes."""
    from gdig_core.models import load_model

    cache: dict[tuple[str, str], tuple[Any, Any]] = getattr(_LOCAL, "models", {})
    key = (path, cfg.model.model_dump_json())
    if key not in cache:
        cache.clear()  # one model per thread: the previous stage's model is done
        with LOAD_LOCK:
            cache[key] = load_model(cfg.model, path=path)
        _LOCAL.models = cache
    return cache[key]


def _rows(job: ShardJob, table_path: Path) -> list[dict[str, Any]]:
    from gdig_core.data import read_pairs

    return read_pairs(table_path).slice(job.start, job.end - job.start).to_pylist()


def execute_job(job: ShardJob) -> dict[str, Any]:
    """Compute one shard into ``job.output``; returns a small JSON-able summary.

    The method functions are called through the stage's key calls (``tasks.stage_keys``), so the
    configuration a shard runs with is the one its stage's cache key covers."""
    from gdig_core.hooks import layer_shape
    from tasks.stage_keys import stage_calls

    log = artifacts.logger()
    cfg = GdigConfig.model_validate(job.config)
    calls = stage_calls(_STAGE_OF.get(job.kind, "curvature"), cfg)
    inputs = {k: storage.fetch(v, cache_root()) for k, v in job.inputs.items()}
    model, tokenizer = loaded_model(cfg, str(inputs["checkpoint"]))
    rows = _rows(job, inputs["table"])
    encoded = calls["encode"](tokenizer, rows)
    pad_id = tokenizer.pad_token_id
    tracked = calls["tracked"](model)
    # The gradient store's projection, when the stage fits curvature in its space too.
    projection = calls["projection"]({n: layer_shape(m) for n, m in tracked.items()}) if "projection" in calls else None
    out_local = _local_output(job.output)
    grad_local = _local_output(job.grad_output) if job.grad_output else None

    def run(batch_size: int) -> dict[str, Any]:
        inject(job.kind, job.index, batch_size)
        batches = calls["batches"].fn(encoded, batch_size, pad_id)  # the batch size halves on OOM
        if job.kind == "curvature_stats":
            from gdig_core.curvature import save_stats

            save_stats(calls["covariance"](model, batches, tracked, projection=projection), out_local)
            return {"examples": len(encoded)}
        if job.kind == "lambda_stats":
            from gdig_core.curvature import load_stats, save_stats

            eigen = load_stats(inputs["eigen"])
            save_stats(calls["lambda"](model, batches, tracked, eigen, projection=projection), out_local)
            return {"examples": len(encoded)}
        if job.kind == "gradients":
            return calls["capture"](model, batches, tracked, out_path=out_local)
        from tasks.influence_calls import score_shard_call

        return score_shard_call(cfg, model, tracked, batches, inputs, out_local, grad_local)

    summary = with_oom_backoff(run, calls["batches"].kwargs["batch_size"], log)
    if job.kind in _STAGE_OF:  # a result-store segment: its sidecar lists the rows' content keys
        from tasks.result_store import publish_segment

        keys = [str(r["id"]) for r in rows]
        if job.grad_output is not None and grad_local is not None:
            publish_segment(grad_local, job.grad_output, keys, {})
        publish_segment(out_local, job.output, keys, summary)
    else:
        if storage.is_url(job.output):
            storage.put_file(out_local, job.output)
        mark_done(out_local, job.output, summary)
    kill_point(job.kind, job.index)
    log.info("%s shard %d: rows %d-%d done", job.kind, job.index, job.start, job.end)
    return summary


#: Shard kinds whose outputs are result-store segments, and the stage whose calls they run.
_STAGE_OF = {"scores": "scoring", "gradients": "gradients"}


def _local_output(location: str) -> Path:
    return storage.local(location) if not storage.is_url(location) else cache_root() / "out" / Path(location).name
