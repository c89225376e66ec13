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

import torch
from torch import Tensor


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
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + idx)
            self.p_out[name] = torch.randn(out_f, k_out, generator=gen)
            self.p_in[name] = torch.randn(in_f, k_in, generator=gen)
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
