"""The two gdig_core.influence.benefit calls, with their inputs read from files: preconditioning the seeds
and scoring one shard (a step of ``tasks.sharding.work``). The only place that knows the influence
API; it depends on the model cache, never on the shard machinery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdig_core.config import GdigConfig


def precondition_call(
    cfg: GdigConfig, checkpoint: str, seed_path: Path, factor_paths: dict[str, Path], out_paths: dict[str, Path]
) -> dict[str, Any]:
    """Precondition the seeds under every preconditioner in ``factor_paths`` (method -> file) in one
    capture pass; write one file per method to ``out_paths``. On the store path (``scoring.path:
    store``) the seeds are projected like the store's gradients, against factors fitted there."""
    from gdig_core.data.encoding import encode_pairs, iter_batches
    from gdig_core.data.pairs import read_pairs
    from gdig_core.influence.factors import load_factors, share_eigenbases
    from gdig_core.influence.features import gradient_projection
    from gdig_core.influence.hooks import layer_shape, select_tracked_modules
    from gdig_core.influence.seed_preconditioning import precondition_seeds
    from tasks.runtime.faults import with_oom_backoff
    from tasks.sharding.model_cache import loaded_model

    model, tokenizer = loaded_model(cfg, checkpoint)
    encoded = encode_pairs(tokenizer, read_pairs(seed_path).to_pylist(), cfg)
    factors = share_eigenbases({m: load_factors(p) for m, p in factor_paths.items()})
    projection = None
    if cfg.scoring.path == "store":
        tracked = select_tracked_modules(model, cfg.curvature)
        projection = gradient_projection({n: layer_shape(m) for n, m in tracked.items()}, cfg.scoring.store)

    def run(batch_size: int):  # noqa: ANN202
        batches = iter_batches(encoded, batch_size, tokenizer.pad_token_id)
        return precondition_seeds(model, batches, factors, cfg.curvature, cfg.scoring, projection=projection)

    pre = with_oom_backoff(run, cfg.scoring.batch_size)
    for method, p in pre.items():
        p.save(out_paths[method])
    first = next(iter(pre.values()))
    return {"seeds": len(first.seed_ids), "bad_seeds": first.bad_seeds, "rank": first.rank,
            "layers": len(first.modules), "methods": list(pre)}


def load_precond(inputs: dict[str, Path]) -> dict:
    """The preconditioned seeds among a job's inputs (``precond:<method>``), by method."""
    from gdig_core.influence.seed_preconditioning import Preconditioned

    return {name.split(":", 1)[1]: Preconditioned.load(path) for name, path in inputs.items()
            if name.startswith("precond:")}


def score_shard_call(
    cfg: GdigConfig, model: Any, tracked: dict, batches: Any, inputs: dict[str, Path], out_path: Path,
    grad_path: Path | None = None,
) -> dict[str, Any]:
    """Score one shard; with ``grad_path`` also write its rows' projected gradients (the store)."""
    from contextlib import nullcontext

    from gdig_core.influence.benefit import score_shard
    from gdig_core.influence.factors import load_factors
    from gdig_core.influence.grad_store import segment_writer
    from gdig_core.influence.hooks import layer_shape
    from gdig_core.influence.variants import score_variants

    precond = load_precond(inputs)
    variants = score_variants(cfg.curvature.method, cfg.scoring.variants)
    shapes = {n: layer_shape(m) for n, m in tracked.items()}
    sink = segment_writer(grad_path, shapes, cfg.scoring) if grad_path is not None else nullcontext()
    with sink as grads:
        summary = score_shard(model, batches, precond, load_factors(inputs["factors"]), cfg.scoring, out_path,
                              variants=variants, release_seeds=True, grad_sink=grads)
    return {k: v for k, v in summary.items() if k != "path"}
