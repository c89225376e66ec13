"""Projected per-example gradient features for clustering (G-DIG's diversity step).

Per tracked layer l with gradient ``dW = sum_t g_t a_t^T`` [out, in], the feature block is a
Kronecker-structured random projection ``(P_out^T dW P_in)`` [k_out, k_in] with fixed seeded
Gaussian ``P_out`` [out, k_out] and ``P_in`` [in, k_in], flattened, cut to its share ``d_l`` of
``feature_dim`` and scaled by ``1/sqrt(d_l)``. Each coordinate is ``<dW, p q^T>`` with Gaussian
p, q, so ``E ||block||^2 = ||dW||_F^2``: the concatenated feature preserves squared gradient
norms (and inner products) in expectation. It is computed from ``a`` and ``g`` directly as
``(g P_out)^T (a P_in)``, never forming ``dW``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gdig_core.config import GradientStoreConfig


def gaussian_pair(seed: int, index: int, out_shape: tuple[int, int], in_shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The seeded Gaussian matrices of layer ``index``: [out, k_out] then [in, k_in], drawn from one
    generator, so every process and shard draws the same ones."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + index)
    return torch.randn(*out_shape, generator=gen), torch.randn(*in_shape, generator=gen)


def split_dims(total: int, n_layers: int) -> list[int]:
    """Share ``total`` feature dimensions among ``n_layers`` as evenly as possible (first get more)."""
    base, extra = divmod(total, n_layers)
    return [base + (1 if i < extra else 0) for i in range(n_layers)]


class KroneckerProjector:
    """Seeded per-layer projections; ``project(name, a, g, mask)`` gives that layer's block [B, d_l].

    ``shapes`` maps layer name -> (out, in) in a fixed order (the tracked order); the matrices
    depend only on (seed, layer position, shape), so every process and shard draws the same ones.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], feature_dim: int, seed: int = 0) -> None:
        self.feature_dim = int(feature_dim)
        self.names = list(shapes)
        self.dims = dict(zip(self.names, split_dims(self.feature_dim, len(self.names)), strict=True))
        self.p_out: dict[str, Tensor] = {}
        self.p_in: dict[str, Tensor] = {}
        self.offsets: dict[str, int] = {}
        offset = 0
        for idx, name in enumerate(self.names):
            d = self.dims[name]
            self.offsets[name] = offset
            offset += d
            if d == 0:
                continue
            out_f, in_f = shapes[name]
            k_out = min(out_f, math.ceil(math.sqrt(d)))
            k_in = math.ceil(d / k_out)
            self.p_out[name], self.p_in[name] = gaussian_pair(seed, idx, (out_f, k_out), (in_f, k_in))
        self._cache: dict[tuple[str, torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _mats(self, name: str, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (name, device, dtype)
        if key not in self._cache:
            self._cache[key] = (self.p_out[name].to(device, dtype), self.p_in[name].to(device, dtype))
        return self._cache[key]

    def project(self, name: str, a: Tensor, g: Tensor) -> Tensor:
        """Feature block of layer ``name`` from ``a`` [B, T, in] and ``g`` [B, T, out] -> [B, d_l] fp32.

        Positions that must not count have to be zeroed in ``a`` or ``g`` by the caller.
        """
        d = self.dims[name]
        if d == 0:
            return a.new_zeros(a.shape[0], 0, dtype=torch.float32)
        p_out, p_in = self._mats(name, a.device, a.dtype)
        block = torch.bmm((g.to(a.dtype) @ p_out).transpose(1, 2), a @ p_in)  # [B, k_out, k_in]
        return block.flatten(1)[:, :d].float() / math.sqrt(d)

    def project_grad(self, name: str, grad: Tensor) -> Tensor:
        """The same block from explicit per-example gradients ``grad`` [B, out, in] (for tests)."""
        d = self.dims[name]
        p_out, p_in = self._mats(name, grad.device, grad.dtype)
        return (p_out.T @ grad @ p_in).flatten(1)[:, :d].float() / math.sqrt(d)


def kronecker_dims(out_f: int, in_f: int, dim: int) -> tuple[int, int]:
    """``(k_out, k_in)`` with ``k_out * k_in <= dim``, as square as the layer allows; the full
    ``(out, in)`` when the layer has at most ``dim`` weights."""
    if out_f * in_f <= dim:
        return out_f, in_f
    k_out = min(out_f, math.isqrt(dim))
    k_in = min(in_f, dim // k_out)
    return min(out_f, dim // k_in), k_in


class GradientProjection:
    """Per-layer Kronecker projection of the gradient store: ``dW' = P_out^T dW P_in`` [k_out, k_in].

    ``P_out`` [out, k_out] and ``P_in`` [in, k_in] are seeded Gaussians with variance ``1/k`` (so
    inner products are kept in expectation), or the identity on a side whose full size fits
    (``kronecker_dims``): a layer that fits entirely is stored exactly. Projecting the layer's
    inputs ``a -> a P_in`` and output gradients ``g -> g P_out`` gives the projected gradient of
    every example, and projected curvature statistics: K-FAC in the projected space, as LoGra
    fits it. Layers are kept in the given (tracked) order; ``offsets`` place each in a flat row.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], dim_per_layer: int, seed: int = 0) -> None:
        self.dim_per_layer, self.seed = int(dim_per_layer), int(seed)
        self.names = list(shapes)
        self.full_shapes = {n: tuple(shapes[n]) for n in self.names}
        self.shapes: dict[str, tuple[int, int]] = {}
        self.p_out: dict[str, Tensor | None] = {}
        self.p_in: dict[str, Tensor | None] = {}
        self.offsets: dict[str, int] = {}
        offset = 0
        for idx, name in enumerate(self.names):
            out_f, in_f = shapes[name]
            k_out, k_in = kronecker_dims(out_f, in_f, self.dim_per_layer)
            self.shapes[name] = (k_out, k_in)
            self.offsets[name] = offset
            offset += k_out * k_in
            p_out, p_in = gaussian_pair(self.seed, idx, (out_f, k_out), (in_f, k_in))
            self.p_out[name] = None if k_out == out_f else p_out / math.sqrt(k_out)
            self.p_in[name] = None if k_in == in_f else p_in / math.sqrt(k_in)
        self.total_dim = offset
        self._cache: dict[tuple[str, str, torch.device, torch.dtype], Tensor] = {}

    @property
    def is_identity(self) -> bool:
        return all(self.p_out[n] is None and self.p_in[n] is None for n in self.names)

    def _mat(self, side: str, name: str, like: Tensor) -> Tensor | None:
        mat = (self.p_out if side == "out" else self.p_in)[name]
        if mat is None:
            return None
        key = (side, name, like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = mat.to(like.device, like.dtype)
        return self._cache[key]

    def apply(self, name: str, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """Projected layer inputs and output gradients: a [..., in] -> [..., k_in], g [..., out] -> [..., k_out]."""
        p_in, p_out = self._mat("in", name, a), self._mat("out", name, g)
        return (a if p_in is None else a @ p_in), (g if p_out is None else g @ p_out)

    def describe(self) -> dict[str, Any]:
        """JSON-able description, stored with every file made in the projected space."""
        # A list, not a mapping: the layer order is the order of the stored rows' blocks.
        return {"dim_per_layer": self.dim_per_layer, "seed": self.seed,
                "layers": [{"name": n, "shape": list(self.shapes[n]), "full_shape": list(self.full_shapes[n])}
                           for n in self.names]}


def gradient_projection(shapes: Mapping[str, tuple[int, int]], cfg: GradientStoreConfig) -> GradientProjection:
    """The gradient store's projection of layers of ``shapes`` [(out, in) in tracked order]."""
    return GradientProjection(shapes, cfg.dim_per_layer, cfg.seed)
