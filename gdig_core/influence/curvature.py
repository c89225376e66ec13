"""K-FAC / EK-FAC curvature statistics: additive partial statistics, merge, eigendecomposition.

Per tracked layer with input ``a`` (in) and output gradient ``g`` (out), over the real (non-pad)
token positions of the examples (prompt positions included: their activations shape the loss of
later target tokens through attention, so their ``g`` is not zero; kronfluence counts them too):

- ``A = sum a a^T / n`` [in, in] and ``G = sum g g^T / n`` [out, out] (first pass, K-FAC factors),
- after eigendecomposition ``A = Q_A diag(eA) Q_A^T``, ``G = Q_G diag(eG) Q_G^T``, EK-FAC refits
  ``Lambda = sum_z (Q_G^T dW_z Q_A)^2 / n_examples`` [out, in] over per-example gradients
  ``dW_z = sum_t g_t a_t^T`` (second pass). K-FAC uses ``Lambda = eG eA^T`` instead.
- ``H^-1 v = Q_G [(Q_G^T v Q_A) / (Lambda + damping)] Q_A^T``; damping is ``damping_factor``
  times the mean of Lambda per layer (``relative``, what kronfluence does with
  ``damping_factor=None`` and factor 0.1) or ``damping_factor`` itself (``absolute``).

The loss behind ``g`` is each example's summed target-token cross-entropy (kronfluence's
convention), with observed labels (empirical Fisher) or labels sampled from the model (true
Fisher, one seeded draw per example id). Statistics are sums plus counts, so shards merge by
addition and a fit split over k shards equals the unsplit fit up to float rounding. An example
whose loss or activations/gradients are not finite is left out of the sums and counted.

Projected space (the gradient store, gdig_core.influence.grad_store): given a
:class:`~gdig_core.influence.features.GradientProjection`, both passes also accumulate the same statistics
of the projected inputs ``a P_in`` and output gradients ``g P_out``, under the layer name prefixed
with ``projected/``: K-FAC/EK-FAC of the projected gradients (LoGra's approach), fitted in the
passes the exact factors take anyway.

The damped inverse built from these statistics, and fitting in one process, are in
:mod:`gdig_core.influence.factors`; what differs between curvature strategies is in
:mod:`gdig_core.influence.preconditioners`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from gdig_core.config import CurvatureConfig
from gdig_core.influence.features import GradientProjection
from gdig_core.influence.hooks import BatchContext, Batches, capture_batches, layer_shape
from gdig_core.influence.preconditioners import SEP
from gdig_core.integrity import reading
from gdig_core.io import atomic_path

N_EXAMPLES = "__n_examples"
N_BAD = "__n_bad"
#: Statistics of a layer's projected gradients are stored under this prefix + the layer name.
PROJECTED = "projected/"


def autocast_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of an ``autocast`` setting ("none" -> None)."""
    return {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _valid_rows(ctx: BatchContext, a: Tensor, g: Tensor, careful: bool) -> tuple[Tensor, Tensor, int]:
    """Token rows of usable examples as [n, in] and [n, out], and the number of examples dropped.

    The fast path (``careful`` False) only removes pad positions; the careful one also drops
    every example with a non-finite value in ``a`` or ``g``.
    """
    if not careful and ctx.all_valid:
        return a.flatten(0, 1), g.flatten(0, 1), 0
    mask = ctx.token_mask
    n_bad = 0
    if careful:
        finite = torch.isfinite(a).all(-1) & torch.isfinite(g).all(-1)
        bad = (mask & ~finite).any(dim=1)
        mask = mask & ~bad[:, None]
        n_bad = int(bad.sum())
    rows = mask.flatten().nonzero().squeeze(1)
    return a.flatten(0, 1).index_select(0, rows), g.flatten(0, 1).index_select(0, rows), n_bad


def _compute_dtype(cfg: CurvatureConfig) -> torch.dtype:
    # Under autocast the products run in the autocast dtype (tensor cores); sums stay fp32.
    return autocast_dtype(cfg.autocast) or torch.float32


def _add(stats: dict[str, Tensor], key: str, value: Tensor) -> None:
    if key in stats:
        stats[key] += value
    else:
        stats[key] = value.clone()


def _count_examples(stats: dict[str, Tensor], ctx: BatchContext) -> None:
    _add(stats, N_EXAMPLES, torch.tensor([int(ctx.ok.sum())], dtype=torch.int64))
    _add(stats, N_BAD, torch.tensor([int((~ctx.ok).sum())], dtype=torch.int64))


class _LastInputCache:
    """Reuse a result computed from a layer input for the next layer fed the very same tensor in the
    same batch: gate_proj and up_proj read one normalised hidden state, and their gradients arrive
    one after the other in backward. One entry only, so memory stays bounded."""

    def __init__(self) -> None:
        self.ctx: BatchContext | None = None
        self.key: tuple | None = None
        self.value: Tensor | None = None

    def get(self, ctx: BatchContext, a: Tensor, tag: object, compute: Callable[[], Tensor]) -> Tensor:
        # Live tensors of one batch share a data pointer only when they view the same memory.
        key = (a.data_ptr(), tuple(a.shape), a.stride(), a.dtype, tag)
        if ctx is not self.ctx or key != self.key:
            self.ctx, self.key, self.value = ctx, key, compute()
        return self.value


#: One projection (its statistics under ``projected/``), or several by name prefix (benchmarks
#: fitting several store dimensions in one pass).
Projections = GradientProjection | Mapping[str, GradientProjection] | None


def _by_prefix(projection: Projections) -> dict[str, GradientProjection]:
    if projection is None:
        return {}
    if isinstance(projection, GradientProjection):
        return {PROJECTED: projection}
    return dict(projection)


def _layer_shapes(
    tracked: dict[str, nn.Linear], projection: Projections
) -> dict[str, tuple[tuple[int, int], torch.device]]:
    """``{stats name: ((out, in), device)}``: every tracked layer, then its projected twins."""
    shapes = {name: (layer_shape(m), m.weight.device) for name, m in tracked.items()}
    for prefix, proj in _by_prefix(projection).items():
        shapes |= {prefix + name: (proj.shapes[name], m.weight.device) for name, m in tracked.items()}
    return shapes


def _with_projection(
    on_layer: Callable[[BatchContext, str, Tensor, Tensor], None], projection: Projections
) -> Callable[[BatchContext, str, Tensor, Tensor], None]:
    """``on_layer`` for the layer, then for its projected inputs and output gradients."""
    prefixes = _by_prefix(projection)
    if not prefixes:
        return on_layer

    def each(ctx: BatchContext, name: str, a: Tensor, g: Tensor) -> None:
        on_layer(ctx, name, a, g)
        for prefix, proj in prefixes.items():
            on_layer(ctx, prefix + name, *proj.apply(name, a, g))

    return each


def covariance_stats(
    model: nn.Module,
    batches: Batches,
    tracked: dict[str, nn.Linear],
    cfg: CurvatureConfig,
    projection: Projections = None,
) -> dict[str, Tensor]:
    """First pass: per layer ``A_sum`` [in, in], ``G_sum`` [out, out] (fp32) and their token counts.

    Keys are ``"{layer}::A_sum"``, ``"::A_count"``, ``"::G_sum"``, ``"::G_count"``,
    ``"::n_bad"`` (examples dropped for non-finite values in that layer) plus ``__n_examples`` and
    ``__n_bad`` (examples with an unusable loss). Values live on the CPU. With ``projection``, the
    same keys for ``projected/{layer}`` too (see the module docstring).
    """
    stats: dict[str, Tensor] = {}
    dtype = _compute_dtype(cfg)
    for name, ((out_f, in_f), dev) in _layer_shapes(tracked, projection).items():
        stats[f"{name}{SEP}A_sum"] = torch.zeros(in_f, in_f, device=dev)
        stats[f"{name}{SEP}G_sum"] = torch.zeros(out_f, out_f, device=dev)
        for k in ("A_count", "G_count", "n_bad"):
            stats[f"{name}{SEP}{k}"] = torch.zeros(1, dtype=torch.int64)

    cache = _LastInputCache()

    def products(
        ctx: BatchContext, name: str, a: Tensor, g: Tensor, careful: bool
    ) -> tuple[Tensor, Tensor, int, int]:
        a_v, g_v, n_bad = _valid_rows(ctx, a, g, careful)
        a_v, g_v = a_v.to(dtype), g_v.to(dtype)
        if careful:  # rows depend on this layer's g too: nothing to share
            a_cov = (a_v.T @ a_v).float()
        else:
            # Projected inputs are fresh tensors per layer: never shared, so keyed by layer name.
            tag = "A" if name in tracked else name
            a_cov = cache.get(ctx, a, tag, lambda: (a_v.T @ a_v).float())
        return a_cov, (g_v.T @ g_v).float(), a_v.shape[0], n_bad

    def on_layer(ctx: BatchContext, name: str, a: Tensor, g: Tensor) -> None:
        a_cov, g_cov, n_rows, n_bad = products(ctx, name, a, g, careful=False)
        if not bool(torch.isfinite(a_cov).all() & torch.isfinite(g_cov).all()):
            # Rare: find the examples with non-finite values and redo the batch without them.
            a_cov, g_cov, n_rows, n_bad = products(ctx, name, a, g, careful=True)
        stats[f"{name}{SEP}A_sum"] += a_cov
        stats[f"{name}{SEP}G_sum"] += g_cov
        stats[f"{name}{SEP}A_count"] += n_rows
        stats[f"{name}{SEP}G_count"] += n_rows
        stats[f"{name}{SEP}n_bad"] += n_bad

    return _accumulate(model, tracked, batches, _with_projection(on_layer, projection), cfg, stats)


def lambda_stats(
    model: nn.Module,
    batches: Batches,
    tracked: dict[str, nn.Linear],
    eigen: dict[str, Tensor],
    cfg: CurvatureConfig,
    projection: Projections = None,
) -> dict[str, Tensor]:
    """EK-FAC second pass: per layer ``L_sum = sum_z (Q_G^T dW_z Q_A)^2`` [out, in] and ``L_count``.

    Rotating ``g`` and ``a`` per token before forming the per-example gradient costs
    ``T (out^2 + in^2) + T out in`` per example instead of ``out in (T + out + in)``. With
    ``projection`` (and its eigenbases in ``eigen``) the projected layers get theirs too.
    """
    stats: dict[str, Tensor] = {}
    dtype = _compute_dtype(cfg)
    rot: dict[str, tuple[Tensor, Tensor]] = {}
    qa_key: dict[str, str] = {}  # layers with an identical Q_A (same input) share its rotation
    for name, ((out_f, in_f), dev) in _layer_shapes(tracked, projection).items():
        rot[name] = (eigen[f"{name}{SEP}QG"].to(dev, dtype), eigen[f"{name}{SEP}QA"].to(dev, dtype))
        qa = eigen[f"{name}{SEP}QA"]
        qa_key[name] = next((k for k in qa_key.values() if torch.equal(eigen[f"{k}{SEP}QA"], qa)), name)
        stats[f"{name}{SEP}L_sum"] = torch.zeros(out_f, in_f, device=dev)
        stats[f"{name}{SEP}L_count"] = torch.zeros(1, dtype=torch.int64)
        stats[f"{name}{SEP}L_n_bad"] = torch.zeros(1, dtype=torch.int64)

    cache = _LastInputCache()

    def rotated_input(ctx: BatchContext, a: Tensor, q_a: Tensor) -> Tensor:
        if not ctx.all_valid:
            a = torch.where(ctx.token_mask[..., None], a, 0)
        return a.to(dtype) @ q_a

    def on_layer(ctx: BatchContext, name: str, a: Tensor, g: Tensor) -> None:
        q_g, q_a = rot[name]
        if not ctx.all_valid:
            g = torch.where(ctx.token_mask[..., None], g, 0)
        a_rot = cache.get(ctx, a, qa_key[name], lambda: rotated_input(ctx, a, q_a))
        per_example = torch.bmm((g.to(dtype) @ q_g).transpose(1, 2), a_rot).float()  # [B, out, in]
        squares = per_example.square()
        summed = squares.sum(0)
        n_good, n_bad = int(ctx.ok.sum()), 0
        if not bool(torch.isfinite(summed).all()):  # rare: drop the examples with non-finite values
            good = ctx.ok & torch.isfinite(squares).flatten(1).all(1)
            summed = squares[good].sum(0)
            n_good, n_bad = int(good.sum()), int((ctx.ok & ~good).sum())
        stats[f"{name}{SEP}L_sum"] += summed
        stats[f"{name}{SEP}L_count"] += n_good
        stats[f"{name}{SEP}L_n_bad"] += n_bad

    return _accumulate(model, tracked, batches, _with_projection(on_layer, projection), cfg, stats)


def _accumulate(
    model: nn.Module,
    tracked: dict[str, nn.Linear],
    batches: Batches,
    on_layer: Callable[[BatchContext, str, Tensor, Tensor], None],
    cfg: CurvatureConfig,
    stats: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Run the capture pass that feeds ``on_layer``, count examples, return the sums on the CPU."""
    seed = cfg.sampling_seed if cfg.fisher == "true" else None
    for ctx in capture_batches(
        model, tracked, batches, on_layer, sampling_seed=seed, autocast_dtype=autocast_dtype(cfg.autocast)
    ):
        _count_examples(stats, ctx)
    return {k: v.cpu() for k, v in stats.items()}


def save_stats(stats: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write partial statistics (safetensors) atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in stats.items()}, str(tmp), metadata=metadata)


def load_stats(path: str | Path) -> dict[str, Tensor]:
    with reading(path, "curvature statistics file"):
        return load_file(str(path))


def merge_stats(items: Sequence[str | Path | dict[str, Tensor]]) -> dict[str, Tensor]:
    """Add partial statistics (paths or dicts) key by key; every part must have the same keys."""
    merged: dict[str, Tensor] = {}
    keys: set[str] | None = None
    for item in items:
        part = load_stats(item) if isinstance(item, (str, Path)) else item
        if keys is None:
            keys = set(part)
        elif set(part) != keys:
            raise ValueError(
                "merge_stats: partial statistics have different keys (different tracked layers?)"
            )
        for k, v in part.items():
            _add(merged, k, v.to(torch.float64) if v.is_floating_point() else v)
    if keys is None:
        raise ValueError("merge_stats: nothing to merge")
    return {k: v.float() if v.is_floating_point() else v for k, v in merged.items()}


def layer_names(stats: dict[str, Tensor], suffix: str) -> list[str]:
    """Layer names present in ``stats`` (in stored order) that have ``{name}::{suffix}``."""
    tail = SEP + suffix
    return [k[: -len(tail)] for k in stats if k.endswith(tail)]


def eigendecompose(
    cov_stats: dict[str, Tensor], cfg: CurvatureConfig, device: torch.device | str | None = None
) -> dict[str, Tensor]:
    """Eigendecompose the normalised, symmetrised A and G of every layer in ``cfg.eig_dtype``.

    Returns ``"{layer}::QA"`` [in, in], ``"::eA"`` [in], ``"::QG"`` [out, out], ``"::eG"`` [out]
    (fp32 on the CPU, eigenvectors in columns, ascending eigenvalues); computed on ``device``
    (default: CUDA when available). It is a plain tensor dict: ship it to
    the workers of the Lambda pass with :func:`save_stats` / :func:`load_stats`.
    """
    dtype = torch.float64 if cfg.eig_dtype == "float64" else torch.float32
    # On a GPU when there is one: a 5632 x 5632 fp64 eigh takes about a minute on a few CPU cores.
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    eigen: dict[str, Tensor] = {}
    for name in layer_names(cov_stats, "A_sum"):
        for f in ("A", "G"):
            count = int(cov_stats[f"{name}{SEP}{f}_count"].sum())
            if count == 0:
                raise ValueError(f"{name}: no tokens were used to fit the {f} factor")
            mat = cov_stats[f"{name}{SEP}{f}_sum"].to(device, dtype) / count
            vals, vecs = torch.linalg.eigh(0.5 * (mat + mat.T))
            eigen[f"{name}{SEP}Q{f}"] = vecs.float().cpu().contiguous()
            eigen[f"{name}{SEP}e{f}"] = vals.float().cpu().contiguous()
    return eigen
