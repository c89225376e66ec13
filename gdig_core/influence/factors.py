"""Curvature factors: the damped inverse ``H^-1`` per layer from the statistics of
:mod:`gdig_core.influence.curvature`, applying it to gradients, its files, and fitting in one process.

``H^-1 v = Q_G [(Q_G^T v Q_A) / (Lambda + damping)] Q_A^T`` per layer; ``Lambda`` is what the
curvature strategy (:mod:`gdig_core.influence.preconditioners`) gives: EK-FAC's refitted diagonal, K-FAC's
``eG eA^T``; a strategy without an eigendecomposition (identity) is ``H = I``. Damping is
``damping_factor`` times the mean of Lambda per layer (``relative``, what kronfluence does with
``damping_factor=None`` and factor 0.1) or ``damping_factor`` itself (``absolute``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from gdig_core.config import CurvatureConfig
from gdig_core.influence import preconditioners
from gdig_core.influence.curvature import PROJECTED, covariance_stats, eigendecompose, lambda_stats
from gdig_core.influence.features import GradientProjection
from gdig_core.influence.hooks import Batches
from gdig_core.influence.preconditioners import SEP
from gdig_core.integrity import reading
from gdig_core.io import atomic_path


@dataclass
class Factors:
    """Damped inverse curvature per layer, ready to precondition gradients.

    ``method`` "ekfac"/"kfac": ``q_a[l]`` [in, in], ``q_g[l]`` [out, out] and
    ``inv_lambda[l] = 1 / (Lambda + damping)`` [out, in]; "identity": no tensors (H = I).
    """

    method: str
    modules: list[str]
    q_a: dict[str, Tensor] = field(default_factory=dict)
    q_g: dict[str, Tensor] = field(default_factory=dict)
    inv_lambda: dict[str, Tensor] = field(default_factory=dict)
    damping: dict[str, float] = field(default_factory=dict)
    #: Set for factors of projected gradients: the projection's ``describe()`` (the shapes above
    #: are then the projected ones).
    projection: dict | None = None

    @property
    def has_eigenbasis(self) -> bool:
        """False for a strategy without an eigendecomposition (identity: H = I, no tensors)."""
        return preconditioners.get(self.method).requires_eigendecomposition

    def to(self, device: torch.device | str) -> Factors:
        """Move the tensors (in place, a no-op when already there) and return self."""
        for store in (self.q_a, self.q_g, self.inv_lambda):
            for name, t in store.items():
                store[name] = t.to(device)
        return self

    def rotate(self, name: str, grad: Tensor) -> Tensor:
        """``Q_G^T grad Q_A``: a stack of layer gradients [S, out, in] in the Kronecker eigenbasis."""
        q_g = self.q_g[name].to(grad.device, grad.dtype)
        q_a = self.q_a[name].to(grad.device, grad.dtype)
        return q_g.T @ grad @ q_a

    def precondition_rotated(self, name: str, rotated: Tensor) -> Tensor:
        """``H^-1 grad`` from the gradient already rotated by :meth:`rotate`."""
        q_g = self.q_g[name].to(rotated.device, rotated.dtype)
        q_a = self.q_a[name].to(rotated.device, rotated.dtype)
        return q_g @ (rotated * self.inv_lambda[name].to(rotated.device, rotated.dtype)) @ q_a.T

    def precondition(self, name: str, grad: Tensor) -> Tensor:
        """``H^-1 grad`` for a stack of layer gradients ``grad`` [S, out, in] (same shape back)."""
        if not self.has_eigenbasis:
            return grad
        return self.precondition_rotated(name, self.rotate(name, grad))


def same_eigenbasis(a: Factors, b: Factors, name: str) -> bool:
    """Whether two factor sets rotate layer ``name`` the same way (EK-FAC and K-FAC from one fit,
    after :func:`share_eigenbases`)."""
    if not (a.has_eigenbasis and b.has_eigenbasis):
        return False
    # Identity of the tensors, not equality: share_eigenbases() made equal ones the same object
    # once, instead of comparing [in, in] matrices at every batch.
    return a.q_a[name] is b.q_a[name] and a.q_g[name] is b.q_g[name]


def precondition_many(factors: dict[str, Factors], name: str, grad: Tensor) -> dict[str, Tensor]:
    """``H^-1 grad`` under several factor sets; the rotation into an eigenbasis they share is done
    once (it is most of the cost: two dense products per seed and layer)."""
    out: dict[str, Tensor] = {}
    rotated: list[tuple[Factors, Tensor]] = []
    for key, f in factors.items():
        if not f.has_eigenbasis:
            out[key] = grad
            continue
        shared = next((r for g, r in rotated if same_eigenbasis(f, g, name)), None)
        if shared is None:
            shared = f.rotate(name, grad)
            rotated.append((f, shared))
        out[key] = f.precondition_rotated(name, shared)
    return out


def finalize_factors(
    cfg: CurvatureConfig,
    modules: Sequence[str],
    eigen: dict[str, Tensor] | None = None,
    lam_stats: dict[str, Tensor] | None = None,
    method: str | None = None,
) -> Factors:
    """Combine eigendecompositions (and, for EK-FAC, the Lambda statistics) with damping.

    ``damping_mode`` relative: ``damping = damping_factor * mean(Lambda)`` per layer (Lambda is
    the EK-FAC diagonal or, for K-FAC, the eigenvalue products ``eG eA^T``); absolute:
    ``damping = damping_factor``. Computed in fp64 like kronfluence, stored fp32. ``method``
    (default ``cfg.method``) picks the preconditioner: K-FAC needs only the eigendecomposition,
    so factors of an EK-FAC fit also give the K-FAC (and identity) variants.
    """
    modules = list(modules)
    cfg = cfg if method is None else cfg.model_copy(update={"method": method})
    strategy = preconditioners.get(cfg.method)
    if not strategy.requires_eigendecomposition:
        return Factors(method=cfg.method, modules=modules)
    if eigen is None:
        raise ValueError(f"method {cfg.method!r} needs the eigendecomposition")
    if strategy.requires_lambda and lam_stats is None:
        raise ValueError(f"method {cfg.method!r} needs lambda statistics (the second pass)")
    factors = Factors(method=cfg.method, modules=modules)
    for name in modules:
        lam = strategy.eigenvalues(name, eigen, lam_stats)  # [out, in], fp64
        damping = (
            cfg.damping_factor * float(lam.mean()) if cfg.damping_mode == "relative" else cfg.damping_factor
        )
        factors.q_a[name] = eigen[f"{name}{SEP}QA"].float().contiguous()
        factors.q_g[name] = eigen[f"{name}{SEP}QG"].float().contiguous()
        factors.inv_lambda[name] = (1.0 / (lam + damping)).float().contiguous()
        factors.damping[name] = float(damping)
    return factors


def finalize_projected_factors(
    cfg: CurvatureConfig,
    modules: Sequence[str],
    projection: GradientProjection,
    eigen: dict[str, Tensor] | None = None,
    lam_stats: dict[str, Tensor] | None = None,
    method: str | None = None,
    prefix: str = PROJECTED,
) -> Factors:
    """:func:`finalize_factors` of the projected statistics (``{prefix}{layer}``), under the
    layer names themselves and marked with the projection."""
    out = finalize_factors(cfg, [prefix + m for m in modules], eigen, lam_stats, method)
    plain = Factors(method=out.method, modules=list(modules), projection=projection.describe())
    for store in ("q_a", "q_g", "inv_lambda", "damping"):
        setattr(plain, store, {k.removeprefix(prefix): v for k, v in getattr(out, store).items()})
    return plain


def save_factors(factors: Factors, path: str | Path) -> None:
    """Write factors as one safetensors file (atomically); method, modules and damping in metadata."""
    tensors: dict[str, Tensor] = {}
    for name in factors.q_a:
        tensors[f"{name}{SEP}QA"] = factors.q_a[name]
        tensors[f"{name}{SEP}QG"] = factors.q_g[name]
        tensors[f"{name}{SEP}inv_lambda"] = factors.inv_lambda[name]
    meta = {
        "gdig.method": factors.method,
        "gdig.modules": json.dumps(factors.modules),
        "gdig.damping": json.dumps(factors.damping),
    }
    if factors.projection is not None:
        meta["gdig.projection"] = json.dumps(factors.projection, sort_keys=True)
    if not tensors:  # safetensors needs at least a header; identity factors carry no tensor
        tensors["__empty"] = torch.zeros(1)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_factors(path: str | Path) -> Factors:
    from safetensors import safe_open

    with reading(path, "curvature factors file"), safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    factors = Factors(method=meta["gdig.method"], modules=json.loads(meta["gdig.modules"]))
    if meta.get("gdig.projection"):
        factors.projection = json.loads(meta["gdig.projection"])
    factors.damping = {k: float(v) for k, v in json.loads(meta["gdig.damping"]).items()}
    for name in factors.damping:
        factors.q_a[name] = tensors[f"{name}{SEP}QA"]
        factors.q_g[name] = tensors[f"{name}{SEP}QG"]
        factors.inv_lambda[name] = tensors[f"{name}{SEP}inv_lambda"]
    return factors


def fit_factors(
    model: nn.Module,
    batches_fn: Callable[[], Batches],
    tracked: dict[str, nn.Linear],
    cfg: CurvatureConfig,
) -> Factors:
    """Convenience for one process: both passes over ``batches_fn()`` (called once per pass)."""
    return fit_factor_set(model, batches_fn, tracked, cfg, [cfg.method])[cfg.method]


def fit_factor_set(
    model: nn.Module,
    batches_fn: Callable[[], Batches],
    tracked: dict[str, nn.Linear],
    cfg: CurvatureConfig,
    methods: Sequence[str],
) -> dict[str, Factors]:
    """:func:`fit_factors` for several preconditioners from one fit (EK-FAC's second pass runs
    only when ``ekfac`` is among ``methods``); the factor sets share their eigenbases."""
    modules = list(tracked)
    eigen = lam = None
    passes = preconditioners.required_passes(methods)
    if passes.covariance:
        eigen = eigendecompose(covariance_stats(model, batches_fn(), tracked, cfg), cfg)
    if passes.lam:
        lam = lambda_stats(model, batches_fn(), tracked, eigen, cfg)
    out = {m: finalize_factors(cfg, modules, eigen, lam, method=m) for m in methods}
    return share_eigenbases(out)


def share_eigenbases(factors: dict[str, Factors]) -> dict[str, Factors]:
    """Make factor sets with equal eigenbases hold the same tensors (K-FAC and EK-FAC files of one
    fit), so :func:`precondition_many` recognises the shared rotation without comparing."""
    seen: list[Factors] = []
    for f in factors.values():
        if not f.has_eigenbasis:
            continue
        for g in seen:
            for name in f.modules:
                if name in g.q_a and torch.equal(f.q_a[name], g.q_a[name]) and torch.equal(f.q_g[name], g.q_g[name]):
                    f.q_a[name], f.q_g[name] = g.q_a[name], g.q_g[name]
        seen.append(f)
    return factors
