"""Seed preconditioning: ``V_s = H^-1 grad_W loss(s)`` per seed and tracked layer (inverse-
Hessian-vector products), exact or rank-r compressed, and their files.

The seeds' gradients use the same loss as the candidates' (``ScoringConfig.loss_normalisation``,
see :mod:`gdig_core.influence.benefit`, which contracts them with the candidates' gradients); the
damped inverse is :class:`gdig_core.influence.factors.Factors`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from gdig_core.config import CurvatureConfig, ScoringConfig
from gdig_core.influence.curvature import autocast_dtype
from gdig_core.influence.factors import Factors, precondition_many, share_eigenbases
from gdig_core.influence.features import GradientProjection
from gdig_core.influence.hooks import BatchContext, Batches, capture_batches, select_tracked_modules
from gdig_core.io import atomic_path


@dataclass
class Preconditioned:
    """Preconditioned seed gradients ``V_s = H^-1 grad loss(s)`` per tracked layer.

    Exact: ``full[l]`` [S, out, in]. Rank-r compressed (``rank`` set): ``left[l]`` [S, out, r]
    and ``right[l]`` [S, r, in] with ``V_s ~= left[s] @ right[s]`` (truncated SVD). On the CPU,
    fp32 or the scoring autocast dtype.
    Seeds whose loss or gradient was not finite are dropped and listed in ``bad_seeds``.
    ``method`` names the preconditioner (ekfac, kfac, identity); ``n_tokens`` [S] holds each
    seed's target-token count (for the per-token score variant).
    """

    seed_ids: list[str]
    modules: list[str]
    loss_normalisation: str
    method: str = "unknown"
    n_tokens: Tensor | None = None
    rank: int | None = None
    full: dict[str, Tensor] = field(default_factory=dict)
    left: dict[str, Tensor] = field(default_factory=dict)
    right: dict[str, Tensor] = field(default_factory=dict)
    bad_seeds: dict[str, str] = field(default_factory=dict)
    #: Set when the seeds live in a gradient store's projected space (its ``describe()``).
    projection: dict | None = None

    def sq_norms(self) -> Tensor:
        """Squared Frobenius norm of each ``V_s`` over all tracked layers: [S] fp64."""
        total = torch.zeros(len(self.seed_ids), dtype=torch.float64)
        for name in self.modules:
            if self.rank is None:
                total += self.full[name].double().flatten(1).pow(2).sum(1).cpu()
            else:  # ||L R||^2 = sum((L^T L) * (R R^T)), without expanding to [out, in]
                left, right = self.left[name].double(), self.right[name].double()
                gram = (left.transpose(1, 2) @ left) * (right @ right.transpose(1, 2))
                total += gram.sum((1, 2)).cpu()
        return total

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
            "gdig.method": self.method,
        }
        if self.projection is not None:
            meta["gdig.projection"] = json.dumps(self.projection, sort_keys=True)
        if self.n_tokens is not None:
            tensors["__n_tokens"] = self.n_tokens.to(torch.int64).contiguous().cpu()
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
            method=meta.get("gdig.method", "unknown"),
            n_tokens=tensors.get("__n_tokens"),
            projection=json.loads(meta["gdig.projection"]) if meta.get("gdig.projection") else None,
        )
        for name in p.modules:
            if rank is None:
                p.full[name] = tensors[f"{name}::V"]
            else:
                p.left[name] = tensors[f"{name}::L"]
                p.right[name] = tensors[f"{name}::R"]
        return p


def masked_inputs(ctx: BatchContext, a: Tensor, g: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
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
    factors: Factors | dict[str, Factors],
    cfg_curv: CurvatureConfig,
    cfg_score: ScoringConfig,
    projection: GradientProjection | None = None,
) -> Preconditioned | dict[str, Preconditioned]:
    """Compute ``V_s = H^-1 grad_W loss(s)`` for every seed and tracked layer.

    Seed gradients use ``cfg_score.loss_normalisation`` and ``cfg_score.autocast`` (the same
    loss as the candidates); preconditioning (and the optional rank-``cfg_score.seed_rank``
    truncated SVD) runs in fp32, one layer at a time during backward, so device memory holds one
    layer's [B, out, in] at once. Results are kept on the CPU in the scoring dtype (fp32, or the
    autocast dtype, which halves the memory of large seed sets).

    ``factors`` may be a dict of several preconditioners (score variants, see
    gdig_core.influence.variants): the seed gradients are then captured once and a dict with one
    :class:`Preconditioned` per key comes back, all over the same seeds (a seed unusable under
    any of them is dropped from all, so their scores can be stacked).

    With ``projection`` (the gradient store's) everything happens in the projected space: the
    seed gradients are ``P_out^T dW P_in`` and ``factors`` must be the ones fitted there.
    """
    single = isinstance(factors, Factors)
    fdict: dict[str, Factors] = {factors.method: factors} if single else dict(factors)
    if not fdict:
        raise ValueError("precondition_seeds: no factors given")
    tracked = select_tracked_modules(model, cfg_curv)
    space = None if projection is None else projection.describe()
    for f in fdict.values():
        if list(tracked) != list(f.modules):
            raise ValueError(f"tracked layers {list(tracked)} differ from the factors' {f.modules}")
        if f.projection != space:
            raise ValueError(f"{f.method} factors were fitted in another space than the seeds' "
                             f"(factors: {f.projection or 'exact'}; seeds: {space or 'exact'})")
        f.to(next(model.parameters()).device)  # once, not per layer and batch
    share_eigenbases(fdict)
    store = autocast_dtype(cfg_score.autocast) or torch.float32
    rank = cfg_score.seed_rank
    parts: dict[str, dict[str, list]] = {k: {n: [] for n in tracked} for k in fdict}
    finite: dict[str, Tensor] = {}

    def on_layer(ctx: BatchContext, name: str, a: Tensor, g: Tensor) -> None:
        a32, g32 = masked_inputs(ctx, a, g, torch.float32)
        if projection is not None:
            a32, g32 = projection.apply(name, a32, g32)
        ok = torch.ones(a.shape[0], dtype=torch.bool)
        for key, v in precondition_many(fdict, name, per_example_grads(a32, g32)).items():
            ok &= torch.isfinite(v).flatten(1).all(1).cpu()
            v = torch.nan_to_num(v)  # bad rows are dropped below; keep the SVD well defined
            if rank is None:
                parts[key][name].append(v.to(store).cpu())
            else:
                left, right = _compress(v, rank)
                parts[key][name].append((left.to(store).cpu(), right.to(store).cpu()))
        finite[name] = ok

    ids: list[str] = []
    bad: dict[str, str] = {}
    keep: list[Tensor] = []
    n_tokens: list[Tensor] = []
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
            for key in parts:
                for name in tracked:
                    parts[key][name].append(None)
        for name in finite:
            ok = ok & finite[name]
        finite.clear()
        keep.append(ok)
        n_tokens.append(ctx.n_tokens.cpu()[ok])
        for i, sid in enumerate(ctx.ids):
            if bool(ok[i]):
                ids.append(sid)
            else:
                bad[sid] = ctx.reasons[i] or "nonfinite_gradient"
    if not ids:
        raise ValueError(f"no usable seed: {bad}")
    tokens = torch.cat(n_tokens).to(torch.int64)
    results: dict[str, Preconditioned] = {}
    for key, layers in parts.items():
        out = Preconditioned(
            seed_ids=ids,
            modules=list(tracked),
            loss_normalisation=cfg_score.loss_normalisation,
            method=fdict[key].method,
            n_tokens=tokens,
            rank=rank,
            bad_seeds=bad,
            projection=space,
        )
        for name in list(layers):
            chunks = layers.pop(name)  # freed as the layer is concatenated: no second full copy
            used = [(c, k) for c, k in zip(chunks, keep, strict=True) if c is not None and bool(k.any())]
            if rank is None:
                out.full[name] = torch.cat([c[k] for c, k in used])
            else:
                out.left[name] = torch.cat([c[0][k] for c, k in used])
                out.right[name] = torch.cat([c[1][k] for c, k in used])
        results[key] = out
    return next(iter(results.values())) if single else results


def stack_preconditioned(precond: dict[str, Preconditioned], release: bool = False) -> Preconditioned:
    """One :class:`Preconditioned` holding the seeds of every entry one after another (in the
    dict's order), so one contraction scores all preconditioners; entries must share seeds.

    ``release`` empties the entries' tensors layer by layer as they are stacked, so the peak
    memory is one copy plus one layer, not two copies (dense seeds are large: 64 seeds of
    Gemma-3-270M's six gdig-official layers take 2 GB per preconditioner).
    """
    first = next(iter(precond.values()))
    for key, p in precond.items():
        if p.seed_ids != first.seed_ids or p.modules != first.modules or p.rank != first.rank:
            raise ValueError(f"preconditioned seeds {key!r} differ from {next(iter(precond))!r} in seeds, layers or rank")
        if p.loss_normalisation != first.loss_normalisation:
            raise ValueError("preconditioned seeds use different loss normalisations")
        if p.projection != first.projection:
            raise ValueError(f"preconditioned seeds {key!r} live in another gradient space than {next(iter(precond))!r}")
    if len(precond) == 1:
        return first
    out = Preconditioned(
        seed_ids=[f"{k}::{s}" for k in precond for s in first.seed_ids],
        modules=list(first.modules),
        loss_normalisation=first.loss_normalisation,
        method="+".join(precond),
        rank=first.rank,
        bad_seeds=dict(first.bad_seeds),
        projection=first.projection,
    )
    for name in first.modules:
        for store in ("full",) if first.rank is None else ("left", "right"):
            getattr(out, store)[name] = torch.cat([getattr(p, store)[name] for p in precond.values()])
            if release:
                for p in precond.values():
                    del getattr(p, store)[name]
    return out
