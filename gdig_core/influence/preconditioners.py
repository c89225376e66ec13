"""The curvature strategies (preconditioners) by name, with what each needs fitted.

One class per strategy, as kronfluence's ``factor/config.py`` has one per factor strategy, with
capability flags the rest of the project asks instead of comparing names:

- ``requires_eigendecomposition``: the covariance pass and the eigendecomposition of the
  Kronecker factors ``A = E[a a^T]``, ``G = E[g g^T]`` (:func:`gdig_core.influence.curvature.covariance_stats`,
  :func:`~gdig_core.influence.curvature.eigendecompose`);
- ``requires_lambda``: the second pass, the corrected eigenvalues ``Lambda`` in that eigenbasis
  (:func:`~gdig_core.influence.curvature.lambda_stats`).

A strategy that needs the eigendecomposition gives :meth:`Preconditioner.eigenvalues`, the
per-layer eigenvalue matrix [out, in] that :func:`gdig_core.influence.factors.finalize_factors` damps
and inverts; ``H^-1 g = Q_G ((Q_G^T g Q_A) / (Lambda + damping)) Q_A^T``. One without it is the
identity (plain gradient similarity). :func:`required_passes` is the one place that decides which
statistics passes a set of strategies runs: the curvature stage's key and its tasks both ask it.

Adding a strategy is one class here, registered with :func:`register` (``docs/extending.md``);
the config (``curvature.method``), the score variants (``<name>-raw``...) and the factor files
follow from the registry. This module imports no torch: the eigenvalues are tensor methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, NamedTuple

if TYPE_CHECKING:
    from torch import Tensor

#: Separator of layer name and statistic in the statistics files (gdig_core.influence.curvature.SEP).
SEP = "::"


class Preconditioner:
    """A curvature strategy; subclasses set ``name`` and the flags (and :meth:`eigenvalues`)."""

    name: ClassVar[str]
    requires_eigendecomposition: ClassVar[bool] = False
    requires_lambda: ClassVar[bool] = False

    @classmethod
    def eigenvalues(cls, layer: str, eigen: dict[str, Tensor], lam_stats: dict[str, Tensor] | None) -> Tensor:
        """The eigenvalues [out, in] (fp64) of layer ``layer`` in the Kronecker eigenbasis."""
        raise NotImplementedError(f"{cls.name} has no eigenvalues (it needs no eigendecomposition)")


REGISTRY: dict[str, type[Preconditioner]] = {}


def register(cls: type[Preconditioner]) -> type[Preconditioner]:
    """Register a strategy under ``cls.name`` (a class decorator)."""
    if cls.requires_lambda and not cls.requires_eigendecomposition:
        raise ValueError(f"{cls.name}: the Lambda pass runs in the eigenbasis; it needs the eigendecomposition")
    REGISTRY[cls.name] = cls
    return cls


@register
class Identity(Preconditioner):
    """H = I: plain gradient similarity, no statistics passes."""

    name = "identity"


@register
class KFAC(Preconditioner):
    """K-FAC: the eigenvalues are the Kronecker products of the factors' eigenvalues, ``eG eA^T``."""

    name = "kfac"
    requires_eigendecomposition = True

    @classmethod
    def eigenvalues(cls, layer: str, eigen: dict[str, Tensor], lam_stats: dict[str, Tensor] | None) -> Tensor:
        e_g, e_a = eigen[f"{layer}{SEP}eG"].double(), eigen[f"{layer}{SEP}eA"].double()
        return e_g[:, None] * e_a[None, :]


@register
class EKFAC(Preconditioner):
    """EK-FAC (George et al. 2018): the eigenvalues refitted in the K-FAC eigenbasis, the mean of
    the squared rotated gradients over the sample (the second pass)."""

    name = "ekfac"
    requires_eigendecomposition = True
    requires_lambda = True

    @classmethod
    def eigenvalues(cls, layer: str, eigen: dict[str, Tensor], lam_stats: dict[str, Tensor] | None) -> Tensor:
        assert lam_stats is not None
        count = int(lam_stats[f"{layer}{SEP}L_count"].sum())
        if count == 0:
            raise ValueError(f"{layer}: no examples were used to fit Lambda")
        return lam_stats[f"{layer}{SEP}L_sum"].double() / count


def names() -> tuple[str, ...]:
    """Every registered strategy, in registration order (identity, kfac, ekfac, then others)."""
    return tuple(REGISTRY)


def get(name: str) -> type[Preconditioner]:
    """The strategy ``name``; ValueError naming the registered ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown curvature method {name!r}; expected one of {', '.join(REGISTRY)}") from None


class Passes(NamedTuple):
    """The statistics passes a curvature fit runs."""

    covariance: bool
    lam: bool


def required_passes(methods: Iterable[str]) -> Passes:
    """The passes a fit serving every strategy in ``methods`` runs: decided here only."""
    strategies = [get(m) for m in methods]
    return Passes(any(s.requires_eigendecomposition for s in strategies), any(s.requires_lambda for s in strategies))


def available(eigen: bool, lam: bool) -> list[str]:
    """The strategies the fitted statistics allow (every one costs nothing more to finalize)."""
    return [n for n, s in REGISTRY.items()
            if (eigen or not s.requires_eigendecomposition) and (lam or not s.requires_lambda)]
