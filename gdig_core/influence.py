"""Seed preconditioning (inverse-Hessian-vector products) and batched candidate scoring.

Sign convention. For a candidate z and a seed s,

    b_s(z) = sum over tracked layers l of < V_s^l , dW_z^l >,   V_s = H^-1 grad_W loss(s),

where ``dW_z = grad_W loss(z) = sum_t g_t a_t^T`` is the gradient of z's LOSS. A gradient step
on z moves the weights by ``-lr H^-1 dW_z`` (or ``-lr dW_z``, same sign of the first-order
effect for positive definite H), changing the seed loss by about ``-lr <grad_s, H^-1 dW_z>``:
``b_s(z) > 0`` means training on z lowers the loss of seed s. This is kronfluence's pairwise
score (query = seed, train = candidate) and the negative of the classical influence.

Loss per example (``ScoringConfig.loss_normalisation``): ``sequence`` = summed target-token
cross-entropy (kronfluence's convention); ``token`` = that sum divided by its target-token
count (each example weighs the same whatever its length, like HF's mean loss at batch size 1).

Scoring never forms a flat gradient. Per layer it either forms the per-example gradients
``bmm(g^T, a)`` [B, out, in] (cost ``B out in (T + S)``) and contracts them with all seeds at
once, or, for rank-r seeds ``V_s = L_s R_s``, contracts ``(g L) . (a R^T)`` per token (cost
``B T S r (out + in)``), whichever is cheaper. Results stream to a Parquet shard batch by batch.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from gdig_core.config import CurvatureConfig, ScoringConfig
from gdig_core.curvature import Factors, autocast_dtype
from gdig_core.features import KroneckerProjector
from gdig_core.hooks import BatchContext, capture_batches, layer_shape, select_tracked_modules
from gdig_core.io import atomic_path
from gdig_core.scores import ScoreBatch, ScoreShardWriter

Batches = Iterable[tuple[list[str], dict[str, Tensor]]]


@dataclass
class Preconditioned:
    """Preconditioned seed gradients ``V_s = H^-1 grad loss(s)`` per tracked layer.

    Exact: ``full[l]`` [S, out, in]. Rank-r compressed (``rank`` set): ``left[l]`` [S, out, r]
    and ``right[l]`` [S, r, in] with ``V_s ~= left[s] @ right[s]`` (truncated SVD). On the CPU,
    fp32 or the scoring autocast dtype.
    Seeds whose loss or gradient was not finite are dropped and listed in ``bad_seeds``.
    """

    seed_ids: list[str]
    modules: list[str]
    loss_normalisation: str
    rank: int | None = None
    full: dict[str, Tensor] = field(default_factory=dict)
    left: dict[str, Tensor] = field(default_factory=dict)
    right: dict[str, Tensor] = field(default_factory=dict)
    bad_seeds: dict[str, str] = field(default_factory=dict)

    def dense(self, name: str) -> Tensor:
        """``V^l`` as [S, out, in] (expanded from the low-rank form when compressed)."""
        return self.full[name] if self.rank is None else self.left[name] @ self.right[name]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Preconditioned:
        """Move every tensor (in place) and return self; a no-op when already there.

        :func:`score_shard` calls this so that one loaded object scores many shards without
        copying the seed gradients to the device again for each shard.
        """
        for store in (self.full, self.left, self.right):
            for name, t in store.items():
                store[name] = t.to(device=device, dtype=dtype or t.dtype)
        return self

    def save(self, path: str | Path) -> None:
        tensors: dict[str, Tensor] = {}
        for name in self.modules:
            if self.rank is None:
                tensors[f"{name}::V"] = self.full[name].contiguous().cpu()
            else:
                tensors[f"{name}::L"] = self.left[name].contiguous().cpu()
                tensors[f"{name}::R"] = self.right[name].contiguous().cpu()
        meta = {
            "gdig.seed_ids": json.dumps(self.seed_ids),
            "gdig.modules": json.dumps(self.modules),
            "gdig.loss_normalisation": self.loss_normalisation,
            "gdig.rank": "" if self.rank is None else str(self.rank),
            "gdig.bad_seeds": json.dumps(self.bad_seeds),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Preconditioned:
        from gdig_core.integrity import reading

        with reading(path, "preconditioned seeds file"), safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        rank = int(meta["gdig.rank"]) if meta.get("gdig.rank") else None
        p = cls(
            seed_ids=json.loads(meta["gdig.seed_ids"]),
            modules=json.loads(meta["gdig.modules"]),
            loss_normalisation=meta["gdig.loss_normalisation"],
            rank=rank,
            bad_seeds=json.loads(meta.get("gdig.bad_seeds", "{}")),
        )
        for name in p.modules:
            if rank is None:
                p.full[name] = tensors[f"{name}::V"]
            else:
                p.left[name] = tensors[f"{name}::L"]
                p.right[name] = tensors[f"{name}::R"]
        return p


def _masked(ctx: BatchContext, a: Tensor, g: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # Zero pad positions and unusable examples in both factors: 0 * NaN would still be NaN.
    if ctx.all_valid:
        return a.to(dtype), g.to(dtype)
    mask = ctx.token_mask[..., None]
    return torch.where(mask, a, 0).to(dtype), torch.where(mask, g, 0).to(dtype)


def per_example_grads(a: Tensor, g: Tensor) -> Tensor:
    """``dW_b = sum_t g[b, t] a[b, t]^T`` for a [B, T, in], g [B, T, out] -> [B, out, in]."""
    return torch.bmm(g.transpose(1, 2), a)


def _compress(v: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-r factors of each [out, in] slice of ``v`` [S, out, in] (truncated SVD)."""
    u, s, vh = torch.linalg.svd(v.float(), full_matrices=False)
    r = min(rank, s.shape[-1])
    return (u[..., :r] * s[..., None, :r]).float(), vh[..., :r, :].float()


def precondition_seeds(
    model: nn.Module,
    seed_batches: Batches,
    factors: Factors,
    cfg_curv: CurvatureConfig,
    cfg_score: ScoringConfig,
) -> Preconditioned:
    """Compute ``V_s = H^-1 grad_W loss(s)`` for every seed and tracked layer.

    Seed gradients use ``cfg_score.loss_normalisation`` and ``cfg_score.autocast`` (the same
    loss as the candidates); preconditioning (and the optional rank-``cfg_score.seed_rank``
    truncated SVD) runs in fp32, one layer at a time during backward, so device memory holds one
    layer's [B, out, in] at once. Results are kept on the CPU in the scoring dtype (fp32, or the
    autocast dtype, which halves the memory of large seed sets).
    """
    tracked = select_tracked_modules(model, cfg_curv)
    if list(tracked) != list(factors.modules):
        raise ValueError(f"tracked layers {list(tracked)} differ from the factors' {factors.modules}")
    factors.to(next(model.parameters()).device)  # once, not per layer and batch
    store = autocast_dtype(cfg_score.autocast) or torch.float32
    rank = cfg_score.seed_rank
    parts: dict[str, list] = {n: [] for n in tracked}
    finite: dict[str, Tensor] = {}

    def on_layer(ctx: BatchContext, name: str, a: Tensor, g: Tensor) -> None:
        a32, g32 = _masked(ctx, a, g, torch.float32)
        v = factors.precondition(name, per_example_grads(a32, g32))
        finite[name] = torch.isfinite(v).flatten(1).all(1).cpu()
        v = torch.nan_to_num(v)  # bad rows are dropped below; keep the SVD well defined
        if rank is None:
            parts[name].append(v.to(store).cpu())
        else:
            left, right = _compress(v, rank)
            parts[name].append((left.to(store).cpu(), right.to(store).cpu()))

    ids: list[str] = []
    bad: dict[str, str] = {}
    keep: list[Tensor] = []
    for ctx in capture_batches(
        model,
        tracked,
        seed_batches,
        on_layer,
        normalisation=cfg_score.loss_normalisation,
        autocast_dtype=autocast_dtype(cfg_score.autocast),
    ):
        ok = ctx.ok.cpu()
        if not finite:  # no backward ran: every seed of the batch had an unusable loss
            for name in tracked:
                parts[name].append(None)
        for name in finite:
            ok = ok & finite[name]
        finite.clear()
        keep.append(ok)
        for i, sid in enumerate(ctx.ids):
            if bool(ok[i]):
                ids.append(sid)
            else:
                bad[sid] = ctx.reasons[i] or "nonfinite_gradient"
    if not ids:
        raise ValueError(f"no usable seed: {bad}")
    out = Preconditioned(
        seed_ids=ids,
        modules=list(tracked),
        loss_normalisation=cfg_score.loss_normalisation,
        rank=rank,
        bad_seeds=bad,
    )
    for name, chunks in parts.items():
        used = [(c, k) for c, k in zip(chunks, keep, strict=True) if c is not None and bool(k.any())]
        if rank is None:
            out.full[name] = torch.cat([c[k] for c, k in used])
        else:
            out.left[name] = torch.cat([c[0][k] for c, k in used])
            out.right[name] = torch.cat([c[1][k] for c, k in used])
    return out


class _LayerScorer:
    """Contracts one layer's (a, g) with all seeds: ``score[b, s] = sum_t g_bt^T V_s a_bt``."""

    def __init__(self, precond: Preconditioned, name: str, device: torch.device, dtype: torch.dtype) -> None:
        self.precond, self.name, self.device, self.dtype = precond, name, device, dtype
        self.n_seeds = len(precond.seed_ids)
        self.v_flat: Tensor | None = None  # [S, out * in] (a view of the stored V when it can be)
        self.lr: tuple[Tensor, Tensor] | None = None  # L [out, S*r], R^T [in, S*r]

    def _choose(self, t: int) -> None:
        p, s = self.precond, self.n_seeds
        if p.rank is not None:
            out_f, r = p.left[self.name].shape[1:]
            in_f = p.right[self.name].shape[2]
            if t * s * r * (out_f + in_f) <= out_f * in_f * (t + s):
                left = p.left[self.name].permute(1, 0, 2).reshape(out_f, s * r)
                right = p.right[self.name].permute(2, 0, 1).reshape(in_f, s * r)
                self.lr = (left.to(self.device, self.dtype), right.to(self.device, self.dtype))
                return
        self.v_flat = p.dense(self.name).reshape(s, -1).to(self.device, self.dtype)

    def __call__(self, a: Tensor, g: Tensor) -> Tensor:
        """a [B, T, in], g [B, T, out] (masked, compute dtype) -> scores [B, S] fp32."""
        if self.v_flat is None and self.lr is None:
            self._choose(a.shape[1])
        if self.lr is not None:
            left, right_t = self.lr
            prod = (g @ left) * (a @ right_t)  # [B, T, S*r]
            return prod.float().sum(1).view(a.shape[0], self.n_seeds, -1).sum(-1)
        return (per_example_grads(a, g).flatten(1) @ self.v_flat.T).float()  # BLAS takes the transpose


def score_shard(
    model: nn.Module,
    batches: Batches,
    precond: Preconditioned,
    factors: Factors | None,
    cfg_score: ScoringConfig,
    out_path: str | Path,
) -> dict:
    """Score every candidate of ``batches`` against all seeds; stream rows to ``out_path`` (Parquet).

    Per candidate z: ``benefit[s] = b_s(z)`` (see the module docstring for the sign), the mean
    target-token loss, the target-token count and the projected gradient feature
    (``cfg_score.feature_dim``). A candidate with a non-finite loss or gradient, or no target
    token, is written with ``ok=False`` and its reason; it never affects other rows. ``factors``
    is only checked for consistency (the curvature is already folded into ``precond``, which is
    moved to the model's device and scoring dtype in place, so later shards reuse it).
    Returns ``{"n", "n_ok", "n_bad", "reasons", "seconds", "path"}``.
    """
    if factors is not None and list(factors.modules) != list(precond.modules):
        raise ValueError("the preconditioned seeds and the factors track different layers")
    if precond.loss_normalisation != cfg_score.loss_normalisation:
        raise ValueError(
            f"seeds were preconditioned with loss normalisation {precond.loss_normalisation!r}, "
            f"scoring asks for {cfg_score.loss_normalisation!r}"
        )
    tracked = {n: model.get_submodule(n) for n in precond.modules}
    device = next(model.parameters()).device
    amp = autocast_dtype(cfg_score.autocast)
    dtype = amp or torch.float32
    precond.to(device, dtype)  # once per object, not per shard
    scorers = {n: _LayerScorer(precond, n, device, dtype) for n in tracked}
    projector = KroneckerProjector(
        {n: layer_shape(m) for n, m in tracked.items()}, cfg_score.feature_dim, cfg_score.feature_seed
    )
    acc: dict[str, list[Tensor]] = {"scores": [], "features": []}

    def on_layer(ctx: BatchContext, name: str, a: Tensor, g: Tensor) -> None:
        a_m, g_m = _masked(ctx, a, g, dtype)
        acc["scores"].append(scorers[name](a_m, g_m))
        acc["features"].append((projector.offsets[name], projector.project(name, a_m, g_m)))

    start = time.perf_counter()
    reasons: Counter[str] = Counter()
    n = n_ok = 0
    m, d = len(precond.seed_ids), cfg_score.feature_dim
    with ScoreShardWriter(
        out_path, precond.seed_ids, d, cfg_score.full_benefit_max_seeds, cfg_score.top_k_seeds
    ) as writer:
        for ctx in capture_batches(
            model, tracked, batches, on_layer, normalisation=cfg_score.loss_normalisation, autocast_dtype=amp
        ):
            b = len(ctx.ids)
            scores = torch.zeros(b, m, device=device)
            for part in acc["scores"]:
                scores += part
            feats = torch.zeros(b, d, device=device)
            for offset, block in acc["features"]:
                feats[:, offset : offset + block.shape[1]] = block
            acc["scores"].clear()
            acc["features"].clear()
            finite = torch.isfinite(scores).all(1) & torch.isfinite(feats).all(1)
            ok = (ctx.ok & finite).cpu().numpy()
            why = [
                r if r is not None else (None if ok[i] else "nonfinite_gradient")
                for i, r in enumerate(ctx.reasons)
            ]
            n_tok = ctx.n_tokens.cpu().numpy()
            loss = (ctx.loss_sum.cpu().double().numpy() / np.maximum(n_tok, 1)).astype(np.float64)
            writer.write(
                ScoreBatch(
                    ids=ctx.ids,
                    ok=ok,
                    bad_reason=why,
                    loss=loss,  # kept when finite, even for a row whose gradient was not
                    n_tokens=n_tok.astype(np.int32),
                    benefit=scores.cpu().numpy(),
                    features=feats.cpu().numpy(),
                )
            )
            n += b
            n_ok += int(ok.sum())
            reasons.update(r for r in why if r is not None)
    return {
        "n": n,
        "n_ok": n_ok,
        "n_bad": n - n_ok,
        "reasons": dict(reasons),
        "seconds": time.perf_counter() - start,
        "path": str(out_path),
    }
