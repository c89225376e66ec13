"""The two gdig_core.influence calls, with their inputs read from files: preconditioning the seeds
and scoring one shard. Kept apart from the shard machinery so it is the only place that knows the
influence API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdig_core.config import GdigConfig


def precondition_call(
    cfg: GdigConfig, checkpoint: str, seed_path: Path, factor_paths: dict[str, Path], out_paths: dict[str, Path]
) -> dict[str, Any]:
    """Precondition the seeds under every preconditioner in ``factor_paths`` (method -> file) in one
    capture pass; write one file per method to ``out_paths``."""
    from gdig_core.curvature import load_factors, share_eigenbases
    from gdig_core.data import read_pairs
    from gdig_core.encoding import encode_pairs, iter_batches
    from gdig_core.influence import precondition_seeds
    from tasks.faults import with_oom_backoff
    from tasks.shard_work import loaded_model

    model, tokenizer = loaded_model(cfg, checkpoint)
    encoded = encode_pairs(tokenizer, read_pairs(seed_path).to_pylist(), cfg)
    factors = share_eigenbases({m: load_factors(p) for m, p in factor_paths.items()})

    def run(batch_size: int):  # noqa: ANN202
        batches = iter_batches(encoded, batch_size, tokenizer.pad_token_id)
        return precondition_seeds(model, batches, factors, cfg.curvature, cfg.scoring)

    pre = with_oom_backoff(run, cfg.scoring.batch_size)
    for method, p in pre.items():
        p.save(out_paths[method])
    first = next(iter(pre.values()))
    return {"seeds": len(first.seed_ids), "bad_seeds": first.bad_seeds, "rank": first.rank,
            "layers": len(first.modules), "methods": list(pre)}


def score_shard_call(
    cfg: GdigConfig, model: Any, tracked: dict, batches: Any, inputs: dict[str, Path], out_path: Path
) -> dict[str, Any]:
    from gdig_core.curvature import load_factors
    from gdig_core.influence import Preconditioned, score_shard
    from gdig_core.variants import score_variants

    precond = {name.split(":", 1)[1]: Preconditioned.load(path) for name, path in inputs.items()
               if name.startswith("precond:")}
    variants = score_variants(cfg.curvature.method, cfg.scoring.variants)
    summary = score_shard(model, batches, precond, load_factors(inputs["factors"]), cfg.scoring, out_path,
                          variants=variants, release_seeds=True)
    return {k: v for k, v in summary.items() if k != "path"}
