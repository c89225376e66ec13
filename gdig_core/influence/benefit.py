"""Batched candidate scoring against preconditioned seeds.

Sign convention. For a candidate z and a seed s,

    b_s(z) = sum over tracked layers l of < V_s^l , dW_z^l >,   V_s = H^-1 grad_W loss(s),

where ``dW_z = grad_W loss(z) = sum_t g_t a_t^T`` is the gradient of z's LOSS. A gradient step
on z moves the weights by ``-lr H^-1 dW_z`` (or ``-lr dW_z``, same sign of the first-order
effect for positive definite H), changing the seed loss by about ``-lr <grad_s, H^-1 dW_z>``:
``b_s(z) > 0`` means training on z lowers the loss of seed s. This is kronfluence's pairwise
score (query = seed, train = candidate) and the negative of the classical influence. The seeds'
side, ``V_s``, is :mod:`gdig_core.influence.seed_preconditioning`.

Loss per example (``ScoringConfig.loss_normalisation``): ``sequence`` = summed target-token
cross-entropy (kronfluence's convention); ``token`` = that sum divided by its target-token
count (each example weighs the same whatever its length, like HF's mean loss at batch size 1).

Scoring never forms a flat gradient. Per layer it either forms the per-example gradients
``bmm(g^T, a)`` [B, out, in] (cost ``B out in (T + S)``) and contracts them with all seeds at
once, or, for rank-r seeds ``V_s = L_s R_s``, contracts ``(g L) . (a R^T)`` per token (cost
``B T S r (out + in)``), whichever is cheaper. Results stream to a Parquet shard batch by batch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from gdig_core.config import ScoringConfig
from gdig_core.influence.curvature import autocast_dtype
from gdig_core.influence.factors import Factors
from gdig_core.influence.features import GradientProjection, KroneckerProjector
from gdig_core.influence.hooks import BatchContext, Batches, capture_batches, layer_shape
from gdig_core.influence.scores import ScoreBatch, ScoreShardWriter
from gdig_core.influence.seed_preconditioning import (
    Preconditioned,
    masked_inputs,
    per_example_grads,
    stack_preconditioned,
)
from gdig_core.influence.variants import Variant


def gram_sq_norms(a: Tensor, g: Tensor) -> Tensor:
    """``||sum_t g_t a_t^T||_F^2`` per example [B] fp32 as ``sum_{t,t'} (g_t . g_t')(a_t . a_t')``,
    never forming the [out, in] gradient."""
    a32, g32 = a.float(), g.float()
    return ((g32 @ g32.transpose(1, 2)) * (a32 @ a32.transpose(1, 2))).sum((1, 2))


def grad_sq_norms(a: Tensor, g: Tensor) -> Tensor:
    """Squared Frobenius norm of each example's layer gradient [B] fp32, the cheaper way."""
    t, out_f, in_f = a.shape[1], g.shape[2], a.shape[2]
    if t * (out_f + in_f) < out_f * in_f:
        return gram_sq_norms(a, g)
    return per_example_grads(a, g).float().pow(2).sum((1, 2))


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

    def __call__(self, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """a [B, T, in], g [B, T, out] (masked, compute dtype) -> (scores [B, S] fp32, squared
        norm of each candidate's layer gradient [B] fp32)."""
        if self.v_flat is None and self.lr is None:
            self._choose(a.shape[1])
        if self.lr is not None:
            left, right_t = self.lr
            prod = (g @ left) * (a @ right_t)  # [B, T, S*r]
            scores = prod.float().sum(1).view(a.shape[0], self.n_seeds, -1).sum(-1)
            return scores, gram_sq_norms(a, g)
        grads = per_example_grads(a, g).flatten(1)
        sq = grads.float().pow(2).sum(1)
        return (grads @ self.v_flat.T).float(), sq  # BLAS takes the transpose


def variant_scales(
    variants: list[Variant], precond: dict[str, Preconditioned], loss_normalisation: str
) -> dict[str, tuple[str, Tensor, str | None]]:
    """Per variant: (the preconditioner it reads, the seed-side divisor [S] fp64, the
    candidate-side divisor: None, ``"tokens"`` or ``"grad_norm"``). See gdig_core.influence.variants."""
    out: dict[str, tuple[str, Tensor, str | None]] = {}
    for v in variants:
        p = precond[v.curvature]
        ones = torch.ones(len(p.seed_ids), dtype=torch.float64)
        if v.normalisation == "raw" or (v.normalisation == "token" and loss_normalisation == "token"):
            out[v.name] = (v.curvature, ones, None)
        elif v.normalisation == "token":
            if p.n_tokens is None:
                raise ValueError("the per-token variant needs the seeds' token counts (re-run preconditioning)")
            out[v.name] = (v.curvature, p.n_tokens.double().clamp(min=1), "tokens")
        else:
            out[v.name] = (v.curvature, p.sq_norms().sqrt().clamp(min=1e-30), "grad_norm")
    return out


@dataclass
class CandidateFacts:
    """What a pass over a batch of candidates records whatever the seeds (numpy, on the CPU).

    ``ok`` is False for a candidate with an unusable loss or a non-finite gradient, score or
    feature, and ``reasons`` says why (None for ok rows); ``loss`` is the mean per target token
    (kept when finite, even for a row whose gradient was not).
    """

    ids: list[str]
    ok: np.ndarray
    reasons: list[str | None]
    loss: np.ndarray
    n_tokens: np.ndarray
    grad_norm: np.ndarray
    features: np.ndarray


class CandidateRecorder:
    """Collects, layer by layer during backward, each candidate's gradient norm, feature and
    projected gradient under each of ``projections``; :meth:`finish` turns a batch into tensors."""

    def __init__(self, shapes: dict[str, tuple[int, int]], feature_dim: int, feature_seed: int,
                 projections: Sequence[GradientProjection] = ()) -> None:
        self.projector = KroneckerProjector(shapes, feature_dim, feature_seed)
        self.projections = list(projections)
        self.parts: dict[str, list] = {"sq": [], "features": [], "grads": []}

    def add(self, name: str, a: Tensor, g: Tensor, sq: Tensor | None = None) -> None:
        """One layer's masked ``a``, ``g``; ``sq`` when the caller has the squared norm already."""
        self.parts["sq"].append(grad_sq_norms(a, g) if sq is None else sq)
        self.parts["features"].append((self.projector.offsets[name], self.projector.project(name, a, g)))
        for i, projection in enumerate(self.projections):
            block = per_example_grads(*projection.apply(name, a, g)).flatten(1).float()
            self.parts["grads"].append((i, projection.offsets[name], block))

    def finish(self, n: int, device: torch.device) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(squared gradient norm [n], features [n, d], projected gradients [n, D] per projection)``."""
        sq = torch.zeros(n, device=device)
        for part in self.parts["sq"]:
            sq += part
        feats = torch.zeros(n, self.projector.feature_dim, device=device)
        for offset, feat in self.parts["features"]:
            feats[:, offset : offset + feat.shape[1]] = feat
        grads = [torch.zeros(n, p.total_dim, device=device) for p in self.projections]
        for i, offset, block in self.parts["grads"]:
            grads[i][:, offset : offset + block.shape[1]] = block
        for part in self.parts.values():
            part.clear()
        return sq, feats, grads


def candidate_facts(ctx: BatchContext, finite: Tensor, sq: Tensor, feats: Tensor) -> CandidateFacts:
    """The seed-independent row data of one batch; ``finite`` [B] marks rows whose other values
    (scores, projected gradients) are finite."""
    ok = (ctx.ok & finite & torch.isfinite(feats).all(1) & torch.isfinite(sq)).cpu().numpy()
    why = [r if r is not None else (None if ok[i] else "nonfinite_gradient") for i, r in enumerate(ctx.reasons)]
    n_tok = ctx.n_tokens.cpu().numpy()
    return CandidateFacts(
        ids=list(ctx.ids),
        ok=ok,
        reasons=why,
        loss=(ctx.loss_sum.cpu().double().numpy() / np.maximum(n_tok, 1)).astype(np.float64),
        n_tokens=n_tok.astype(np.int32),
        grad_norm=sq.cpu().double().clamp(min=0).sqrt().numpy(),
        features=feats.cpu().numpy(),
    )


@dataclass
class SeedBlocks:
    """The seeds of every preconditioner a set of score variants reads, stacked into one
    :class:`Preconditioned` (so one contraction scores them all), with each variant's rescaling."""

    seed_ids: list[str]
    stacked: Preconditioned
    block: dict[str, slice]
    scales: dict[str, tuple[str, Tensor, str | None]]
    variants: list[Variant]

    def benefits(self, raw: Tensor, n_tokens: np.ndarray, grad_norm: np.ndarray) -> dict[str, np.ndarray]:
        """Per variant, the benefit [B, M] from the raw contraction ``raw`` [B, stacked seeds]."""
        raw64 = raw.cpu().double()
        norm = torch.from_numpy(np.asarray(grad_norm, dtype=np.float64))
        out: dict[str, np.ndarray] = {}
        for v in self.variants:
            key, seed_div, cand = self.scales[v.name]
            values = raw64[:, self.block[key]] / seed_div[None, :]
            if cand == "tokens":
                values = values / torch.from_numpy(np.maximum(n_tokens, 1)).double()[:, None]
            elif cand == "grad_norm":
                values = values / norm.clamp(min=1e-30)[:, None]
            out[v.name] = values.numpy()
        return out


def seed_blocks(
    precond: Preconditioned | dict[str, Preconditioned],
    loss_normalisation: str,
    variants: list[Variant] | None = None,
    release_seeds: bool = False,
) -> SeedBlocks:
    """Check the preconditioned seeds against the score variants and stack the ones they read
    (see :func:`stack_preconditioned` for ``release_seeds``)."""
    pdict = {precond.method: precond} if isinstance(precond, Preconditioned) else dict(precond)
    if variants is None:
        variants = [Variant(next(iter(pdict)), "raw")]
    first = next(iter(pdict.values()))
    for p in pdict.values():
        if p.loss_normalisation != loss_normalisation:
            raise ValueError(
                f"seeds were preconditioned with loss normalisation {p.loss_normalisation!r}, "
                f"scoring asks for {loss_normalisation!r}"
            )
    missing = sorted({v.curvature for v in variants} - set(pdict))
    if missing:
        raise ValueError(f"score variants need preconditioned seeds for {missing}; have {sorted(pdict)}")
    scales = variant_scales(variants, pdict, loss_normalisation)
    used = [k for k in pdict if any(v.curvature == k for v in variants)]
    stacked = stack_preconditioned({k: pdict[k] for k in used}, release=release_seeds and len(used) > 1)
    block = {k: slice(i * len(first.seed_ids), (i + 1) * len(first.seed_ids)) for i, k in enumerate(used)}
    return SeedBlocks(list(first.seed_ids), stacked, block, scales, list(variants))


def score_shard(
    model: nn.Module,
    batches: Batches,
    precond: Preconditioned | dict[str, Preconditioned],
    factors: Factors | None,
    cfg_score: ScoringConfig,
    out_path: str | Path,
    variants: list[Variant] | None = None,
    release_seeds: bool = False,
    grad_sink: GradientSink | Sequence[GradientSink] | None = None,
) -> dict:
    """Score every candidate of ``batches`` against all seeds; stream rows to ``out_path`` (Parquet).

    Per candidate z: ``benefit[s] = b_s(z)`` (see the module docstring for the sign), the mean
    target-token loss, the target-token count, the norm of its loss gradient over the tracked
    layers and the projected gradient feature (``cfg_score.feature_dim``). A candidate with a
    non-finite loss or gradient, or no target token, is written with ``ok=False`` and its reason;
    it never affects other rows. ``factors`` is only checked for consistency (the curvature is
    already folded into ``precond``, which is moved to the model's device and scoring dtype in
    place, so later shards reuse it).

    Score variants (gdig_core.influence.variants): ``precond`` may be a dict of preconditioned seeds by
    curvature method; their seed sets are stacked and contracted in the same pass. The first of
    ``variants`` (default: the primary variant of the single ``precond``) fills the benefit
    columns; every variant gets summary columns (mean, fraction positive, min). With
    ``release_seeds`` the dict's seed tensors are moved into the stacked copy (the dict's entries
    are empty afterwards): for callers that loaded them for this call only.

    ``grad_sink`` (gdig_core.influence.grad_store) also receives every candidate's projected gradient, in
    the same pass: how the gradient store fills while the exact path scores (several sinks, for
    several projections, are served by the same pass).
    Returns ``{"n", "n_ok", "n_bad", "reasons", "seconds", "path"}``.
    """
    seeds = seed_blocks(precond, cfg_score.loss_normalisation, variants, release_seeds)
    stacked = seeds.stacked
    if stacked.projection is not None:
        raise ValueError("these seeds were preconditioned in a gradient store's projected space: "
                         "score them against the store (gdig_core.influence.grad_store.rescore_segment)")
    if factors is not None and list(factors.modules) != list(stacked.modules):
        raise ValueError("the preconditioned seeds and the factors track different layers")
    tracked = {n: model.get_submodule(n) for n in stacked.modules}
    device = next(model.parameters()).device
    amp = autocast_dtype(cfg_score.autocast)
    dtype = amp or torch.float32
    stacked.to(device, dtype)  # once per object, not per shard
    scorers = {n: _LayerScorer(stacked, n, device, dtype) for n in tracked}
    sinks = [] if grad_sink is None else [grad_sink] if hasattr(grad_sink, "write") else list(grad_sink)
    recorder = CandidateRecorder({n: layer_shape(m) for n, m in tracked.items()}, cfg_score.feature_dim,
                                 cfg_score.feature_seed, [s.projection for s in sinks])
    scores_parts: list[Tensor] = []

    def on_layer(ctx: BatchContext, name: str, a: Tensor, g: Tensor) -> None:
        a_m, g_m = masked_inputs(ctx, a, g, dtype)
        scores, sq = scorers[name](a_m, g_m)
        scores_parts.append(scores)
        recorder.add(name, a_m, g_m, sq)

    start = time.perf_counter()
    reasons: Counter[str] = Counter()
    n = n_ok = 0
    names = [v.name for v in seeds.variants]
    with ScoreShardWriter(
        out_path, seeds.seed_ids, cfg_score.feature_dim, cfg_score.full_benefit_max_seeds, cfg_score.top_k_seeds,
        variants=names,
    ) as writer:
        for ctx in capture_batches(
            model, tracked, batches, on_layer, normalisation=cfg_score.loss_normalisation, autocast_dtype=amp
        ):
            b = len(ctx.ids)
            raw = torch.zeros(b, len(stacked.seed_ids), device=device)
            for part in scores_parts:
                raw += part
            scores_parts.clear()
            sq, feats, grads = recorder.finish(b, device)
            facts = candidate_facts(ctx, torch.isfinite(raw).all(1), sq, feats)
            per_variant = seeds.benefits(raw, facts.n_tokens, facts.grad_norm)
            writer.write(score_batch(facts, per_variant, names[0]))
            for sink, projected in zip(sinks, grads, strict=True):
                sink.write(candidate_facts(ctx, torch.isfinite(projected).all(1), sq, feats), projected.cpu())
            n += b
            n_ok += int(facts.ok.sum())
            reasons.update(r for r in facts.reasons if r is not None)
    return {
        "n": n,
        "n_ok": n_ok,
        "n_bad": n - n_ok,
        "reasons": dict(reasons),
        "seconds": time.perf_counter() - start,
        "path": str(out_path),
    }


def score_batch(facts: CandidateFacts, per_variant: dict[str, np.ndarray], primary: str) -> ScoreBatch:
    """The score shard rows of one batch: its facts and every variant's benefit."""
    return ScoreBatch(
        ids=facts.ids,
        ok=facts.ok,
        bad_reason=facts.reasons,
        loss=facts.loss,
        n_tokens=facts.n_tokens,
        benefit=per_variant[primary],
        features=facts.features,
        grad_norm=facts.grad_norm,
        variant_benefit=per_variant,
    )


class GradientSink(Protocol):
    """Where a scoring pass puts every candidate's projected gradient (gdig_core.influence.grad_store)."""

    projection: GradientProjection

    def write(self, facts: CandidateFacts, grads: Tensor) -> None: ...
