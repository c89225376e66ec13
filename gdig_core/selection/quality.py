"""Eligibility and the quality set (design section 3, step 5).

Eligible: ``ok`` is True and the summaries and the feature row are finite. Other candidates are
excluded from every method and counted by reason in ``summary.json``. The quality set Q is the
eligible candidates that pass ``SelectionConfig.quality_rule``, ranked by mean benefit; every
ranking breaks ties by candidate id (:func:`id_order`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gdig_core.config import SelectionConfig

if TYPE_CHECKING:
    from gdig_core.influence.scores import ScoreTable

#: frac_pos is a ratio of counts; the slack keeps tau=0.9 with 9 of 10 seeds inside the set.
_TAU_SLACK = 1e-9
CHUNK_ROWS = 65_536


class SelectionError(ValueError):
    """Invalid selection input (budget, method, ids missing from the pool...)."""


@dataclass
class QualityResult:
    """The quality set and the eligibility that precedes it (arrays over the N candidates)."""

    eligible: np.ndarray  # bool [N]
    mask: np.ndarray  # bool [N]: in the quality set
    order: np.ndarray  # int64 [|Q|]: quality-set indices, best first
    excluded: dict[str, int]  # reason -> count, for candidates that are not eligible
    rule: str  # human-readable rule
    #: object [N]: why each candidate is not eligible ("" when it is); None: not recorded.
    exclusion: np.ndarray | None = None
    #: int8 [N]: 0 = kept by every pre-filter, k = rejected by the k-th; None: no pre-filters.
    prefilter_stage: np.ndarray | None = None


def eligible_mask(scores: ScoreTable, need_features: bool = True) -> tuple[np.ndarray, dict[str, int]]:
    """Candidates usable by any method, and the count of the others by reason.

    Scoring marks failed rows ``ok == False`` with a ``bad_reason``; rows with non-finite
    summaries or features are excluded too, because no ranking or distance can use them.
    """
    ok = np.asarray(scores.ok, dtype=bool)
    finite = np.isfinite(scores.benefit_mean) & np.isfinite(scores.benefit_frac_pos)
    feat_ok = np.ones_like(ok)
    if need_features and len(ok):
        # A sum is non-finite iff some entry is (or it overflows, which is just as unusable).
        feat_ok = _finite_rows(scores.features)
    eligible = ok & finite & feat_ok
    reasons: Counter[str] = Counter()
    for i in np.flatnonzero(~ok):
        reasons[str(scores.bad_reason[i] or "unknown")] += 1
    reasons["non_finite_score"] += int((ok & ~finite).sum())
    reasons["non_finite_feature"] += int((ok & finite & ~feat_ok).sum())
    return eligible, {k: v for k, v in sorted(reasons.items()) if v}


def _finite_rows(features: np.ndarray) -> np.ndarray:
    out = np.empty(len(features), dtype=bool)
    for s in range(0, len(features), CHUNK_ROWS):
        out[s : s + CHUNK_ROWS] = np.isfinite(features[s : s + CHUNK_ROWS].sum(axis=1, dtype=np.float64))
    return out


def id_order(ids: np.ndarray) -> np.ndarray:
    """Position of each id in sorted order: the deterministic tie-breaker of every ranking."""
    keys = np.asarray(ids).astype(str)
    out = np.empty(len(keys), dtype=np.int64)
    out[np.argsort(keys, kind="stable")] = np.arange(len(keys))
    return out


def rank_by_benefit(scores: ScoreTable, idx: np.ndarray, tie: np.ndarray | None = None) -> np.ndarray:
    """``idx`` sorted by mean benefit, highest first; equal means by candidate id."""
    idx = np.asarray(idx, dtype=np.int64)
    tie = id_order(scores.ids) if tie is None else tie
    return idx[np.lexsort((tie[idx], -scores.benefit_mean[idx]))]


def quality_size_for(cfg: SelectionConfig, budget: int) -> int:
    """The quality-set size under ``quality_rule=topk`` (``top_k``, else top_k_per_budget x budget)."""
    return cfg.top_k if cfg.top_k is not None else max(1, round(cfg.top_k_per_budget * budget))


def quality_mask(
    scores: ScoreTable, cfg: SelectionConfig, budget: int, eligible: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the quality set (G-DIG step 5) under ``cfg.quality_rule``.

    ``fraction``: benefits at least a fraction tau of the seeds (tau=1: every seed, the paper).
    ``topk``: the :func:`quality_size_for` best by mean benefit. ``min_mean``: mean >= min_mean.
    """
    if eligible is None:
        eligible, _ = eligible_mask(scores)
    if cfg.quality_rule == "fraction":
        with np.errstate(invalid="ignore"):
            return eligible & (scores.benefit_frac_pos >= cfg.tau - _TAU_SLACK)
    if cfg.quality_rule == "min_mean":
        with np.errstate(invalid="ignore"):
            return eligible & (scores.benefit_mean >= cfg.min_mean)
    if cfg.quality_rule == "topk":
        top = rank_by_benefit(scores, np.flatnonzero(eligible))[: quality_size_for(cfg, budget)]
        mask = np.zeros(len(eligible), dtype=bool)
        mask[top] = True
        return mask
    raise SelectionError(f"unknown quality_rule {cfg.quality_rule!r}")


def describe_rule(cfg: SelectionConfig, budget: int) -> str:
    """The quality rule as a short phrase for reasons and summaries."""
    if cfg.quality_rule == "fraction":
        return f"fraction of seeds benefited >= tau={cfg.tau:g}"
    if cfg.quality_rule == "min_mean":
        return f"mean benefit >= {cfg.min_mean:g}"
    return f"top {quality_size_for(cfg, budget)} by mean benefit"


def quality_rank(
    scores: ScoreTable, cfg: SelectionConfig, budget: int, tie: np.ndarray | None = None,
    prefilter: Callable[[np.ndarray], tuple[np.ndarray, dict[str, int], dict[int, str], np.ndarray]] | None = None,
    prefilter_names: Sequence[str] = (),
) -> QualityResult:
    """Eligibility, the quality set and its ranking by mean benefit (ties by id).

    ``prefilter`` (eligible -> (kept, count per pre-filter, row -> reason, rejecting stage), see
    gdig_core.selection.context.prefilter_keep) runs before the quality rule, so a ``topk`` quality
    set is the top k of what the pre-filters kept: the cascade pre-filters -> influence ranking."""
    eligible, excluded = eligible_mask(scores)
    exclusion = exclusion_reasons(scores, eligible)
    rule = describe_rule(cfg, budget)
    stage = None
    if prefilter is not None:
        kept, counts, why, stage = prefilter(eligible)
        excluded = {**excluded, **counts}
        for i, reason in why.items():
            exclusion[i] = reason
        eligible = kept
        rule += " after pre-filters " + "+".join(prefilter_names)
    mask = quality_mask(scores, cfg, budget, eligible)
    order = rank_by_benefit(scores, np.flatnonzero(mask), tie)
    return QualityResult(eligible, mask, order, excluded, rule, exclusion, stage)


def exclusion_reasons(scores: ScoreTable, eligible: np.ndarray) -> np.ndarray:
    """Why each candidate is not eligible, as counted by :func:`eligible_mask` ("" when it is)."""
    out = np.full(len(eligible), "", dtype=object)
    for i in np.flatnonzero(~eligible):
        if not scores.ok[i]:
            out[i] = str(scores.bad_reason[i] or "unknown")
        elif np.isfinite(scores.benefit_mean[i]) and np.isfinite(scores.benefit_frac_pos[i]):
            out[i] = "non_finite_feature"
        else:
            out[i] = "non_finite_score"
    return out
