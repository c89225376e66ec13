"""Score variants: one curvature (preconditioner) and one normalisation, scored in one pass.

The benefit ``b_s(z) = <H^-1 grad_s, grad_z>`` is linear in the preconditioned seed gradient, so
several preconditioners can be scored at once by stacking their seed sets, and any per-seed or
per-candidate rescaling can be applied afterwards. A variant is named ``<curvature>-<normalisation>``:

- curvature ``ekfac``, ``kfac`` or ``identity`` (no preconditioner: plain gradient similarity),
  or any strategy registered in :mod:`gdig_core.influence.preconditioners`.
  K-FAC reuses the EK-FAC eigenbases (its eigenvalues are the Kronecker products of the factors'
  eigenvalues), so one curvature fit serves both.
- normalisation, applied to the captured loss gradients (``scoring.loss_normalisation``):
  ``raw`` (as captured); ``token`` (per-token loss on both sides: the sequence-summed gradients
  divided by the target-token counts of the seed and of the candidate; the same as ``raw`` when
  the loss is already per token); ``cosine`` (unit-normalised gradients, as TrackStar and LESS
  do: divided by the candidate gradient's norm and the preconditioned seed gradient's norm, both
  Frobenius norms over the tracked layers; with ``identity`` this is exactly the cosine
  similarity of the two gradients).

Rescaling by positive numbers never changes a sign, so the fraction of seeds a candidate
benefits is the same for every normalisation of one curvature; the mean (and so the ranking) is
what changes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

NORMALISATIONS = ("raw", "token", "cosine")


@dataclass(frozen=True)
class Variant:
    curvature: str
    normalisation: str

    @property
    def name(self) -> str:
        return f"{self.curvature}-{self.normalisation}"


def parse_variant(name: str) -> Variant:
    """``"ekfac-raw"`` -> Variant("ekfac", "raw"); ValueError naming the accepted forms."""
    curvature, sep, normalisation = str(name).partition("-")
    # Looked up, not imported (as the config validators do): this module is imported by
    # gdig_core.config, and naming a strategy runs none of its code.
    curvatures = importlib.import_module("gdig_core.influence.preconditioners").names()
    if not sep or curvature not in curvatures or normalisation not in NORMALISATIONS:
        raise ValueError(
            f"unknown score variant {name!r}: expected <curvature>-<normalisation> with curvature in "
            f"{'/'.join(curvatures)} and normalisation in {'/'.join(NORMALISATIONS)} (e.g. ekfac-raw)"
        )
    return Variant(curvature, normalisation)


def primary_variant(curvature_method: str) -> Variant:
    """The variant that fills a score shard's main benefit columns: the configured curvature, raw."""
    return Variant(curvature_method, "raw")


def score_variants(curvature_method: str, extra: list[str]) -> list[Variant]:
    """The primary variant first, then the extra ones in the given order (duplicates dropped)."""
    out = [primary_variant(curvature_method)]
    for name in extra:
        v = parse_variant(name)
        if v not in out:
            out.append(v)
    return out


def curvature_methods(variants: list[Variant]) -> list[str]:
    """The distinct preconditioners the variants need, in first-use order."""
    return list(dict.fromkeys(v.curvature for v in variants))
