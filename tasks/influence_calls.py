"""The two gdig_core.influence calls, with their inputs read from files: preconditioning the seeds
and scoring one shard. Kept apart from the shard machinery so it is the only place that knows the
influence API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdig_core.config import GdigConfig


def precondition_call(cfg: GdigConfig, checkpoint: str, seed_path: Path, factors_path: Path, out_path: Path) -> dict[str, Any]:
    from gdig_core.curvature import load_factors
    from gdig_core.data import read_pairs
    from gdig_core.encoding import encode_pairs, iter_batches
    from gdig_core.influence import precondition_seeds
    from tasks.faults import with_oom_backoff
    from tasks.shard_work import loaded_model

    model, tokenizer = loaded_model(cfg, checkpoint)
    encoded = encode_pairs(tokenizer, read_pairs(seed_path).to_pylist(), cfg)
    factors = load_factors(factors_path)

    def run(batch_size: int):  # noqa: ANN202
        batches = iter_batches(encoded, batch_size, tokenizer.pad_token_id)
        return precondition_seeds(model, batches, factors, cfg.curvature, cfg.scoring)

    pre = with_oom_backoff(run, cfg.scoring.batch_size)
    pre.save(out_path)
    return {"seeds": len(pre.seed_ids), "bad_seeds": pre.bad_seeds, "rank": pre.rank, "layers": len(pre.modules)}


def score_shard_call(
    cfg: GdigConfig, model: Any, tracked: dict, batches: Any, inputs: dict[str, Path], out_path: Path
) -> dict[str, Any]:
    from gdig_core.curvature import load_factors
    from gdig_core.influence import Preconditioned, score_shard

    summary = score_shard(model, batches, Preconditioned.load(inputs["precond"]), load_factors(inputs["factors"]),
                          cfg.scoring, out_path)
    return {k: v for k, v in summary.items() if k != "path"}
