"""What a selection method decides, and the pieces the methods share.

A method (:mod:`gdig_core.selection.registry`) gets a :class:`MethodInput`: the score table, the
eligibility and quality set, the selection settings with the method's overrides applied, the
budget, the id tie-breaker and the pool's texts and labels (:class:`PairContext`). It returns a
:class:`Plan`: the rows picked in pick order with a reason each, and the status of every
candidate; :mod:`gdig_core.selection.outputs` writes it.

Shortfall (budget larger than what a method can supply, ``SelectionConfig.shortfall``):
``take_all`` selects all of Q and records the shortfall; ``top_up`` fills the rest from the
next-best eligible candidates outside Q by mean benefit (status ``top_up``, with that reason).
When even the eligible pool is too small every eligible candidate is taken. Either way the
selection is never silently short: the plan carries a ``shortfall`` entry with a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gdig_core.config import SelectionConfig
from gdig_core.selection.clustering import ClusterResult, within_cluster_rank
from gdig_core.selection.context import PairContext
from gdig_core.selection.layout import BAD, BELOW_QUALITY, NOT_REACHED, SELECTED, TOP_UP
from gdig_core.selection.quality import QualityResult, rank_by_benefit

if TYPE_CHECKING:
    from gdig_core.influence.scores import ScoreTable


@dataclass
class Plan:
    """What one method decided, over all N candidates."""

    picked: np.ndarray  # int64 indices, pick order
    reasons: list[str]
    status: np.ndarray  # int8 [N]
    quality_rank: np.ndarray | None = None  # int64 [N], 1-based, 0 = not in Q
    cluster: np.ndarray | None = None  # int32 [N], -1 = not clustered
    cluster_rank: np.ndarray | None = None  # int64 [N], 1-based, 0 = not clustered
    distance: np.ndarray | None = None  # float32 [N], NaN = not clustered
    clustering: dict[str, Any] | None = None
    shortfall: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The method's ranking score per candidate (higher = better), None when it has none (random).
    score: np.ndarray | None = None
    #: object [N]: why each candidate was not picked, as the method words it (None where the
    #: method leaves it to :func:`row_reasons`: exclusions and the quality set).
    why: np.ndarray | None = None

    def explain(self, rows: np.ndarray, texts: list[str] | str) -> None:
        """Record the reason of ``rows`` (not picked): one text each, or one for all."""
        if self.why is None:
            self.why = np.full(len(self.status), None, dtype=object)
        if isinstance(texts, str):
            self.why[rows] = texts
        else:
            if len(texts) != len(rows):
                raise ValueError(f"{len(rows)} rows but {len(texts)} reasons")
            self.why[rows] = _column(texts)


def _column(texts: list[str]) -> np.ndarray:
    """Strings as an object array (assigned into another without a fixed-width copy)."""
    out = np.empty(len(texts), dtype=object)
    out[:] = texts
    return out


@dataclass
class MethodInput:
    """Everything a method may use to decide one selection."""

    scores: ScoreTable
    q: QualityResult  # eligibility and the quality set (after the method's pre-filters)
    cfg: SelectionConfig  # the selection section with the method's overrides applied
    budget: int
    tie: np.ndarray  # int64 [N]: position of each id in sorted order (the tie-breaker)
    ctx: PairContext
    kind: str  # the method's registered name


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def row_reasons(plan: Plan, scores: ScoreTable, q: QualityResult) -> np.ndarray:
    """The reason of every candidate (object [N]), as ``candidates.parquet`` records it: the pick
    reason of each picked row, the method's own for the rows it explained, and the shared ones for
    rows excluded before selection or left out of the quality set."""
    why = plan.why.copy() if plan.why is not None else np.full(len(plan.status), None, dtype=object)
    why[plan.picked] = _column(plan.reasons)
    for i in np.flatnonzero(plan.status == BAD):
        excl = q.exclusion[i] if q.exclusion is not None else ""
        why[i] = f"excluded before selection: {excl or 'non-finite score or feature'}"
    n_q = len(q.order)
    below = np.flatnonzero((plan.status == BELOW_QUALITY) & (why == None))  # noqa: E711
    head = f"not in the quality set ({n_q} candidates; rule: {q.rule}): it benefits "
    # Python floats: formatting them is several times faster than numpy scalars (1M rows).
    why[below] = _column([f"{head}{frac:.0%} of the seeds, mean benefit {mean:.4g}" for frac, mean in
                  zip(scores.benefit_frac_pos[below].tolist(), scores.benefit_mean[below].tolist(), strict=True)])
    for i in np.flatnonzero(why == None):  # noqa: E711
        why[i] = "not selected"  # a method that words none of its rows
    return why


def status_base(q: QualityResult, use_quality: bool) -> np.ndarray:
    status = np.full(len(q.eligible), NOT_REACHED, dtype=np.int8)
    if use_quality:
        status[~q.mask] = BELOW_QUALITY
    status[~q.eligible] = BAD
    return status


def quality_ranks(q: QualityResult) -> np.ndarray:
    out = np.zeros(len(q.mask), dtype=np.int64)
    out[q.order] = np.arange(1, len(q.order) + 1)
    return out


def shortfall_entry(budget: int, available: int, policy: str, message: str) -> dict[str, Any]:
    return {"requested": budget, "available": available, "policy": policy, "message": message}


def all_eligible_shortfall(budget: int, n_eligible: int) -> dict[str, Any]:
    """A baseline's budget beyond the whole eligible pool: it takes them all, and says so."""
    return shortfall_entry(
        budget, n_eligible, "take_all",
        f"budget {budget} exceeds the {n_eligible} eligible candidates; selected all of them",
    )


def top_up(
    scores: ScoreTable, q: QualityResult, cfg: SelectionConfig, budget: int, plan: Plan, tie: np.ndarray
) -> None:
    """Apply the shortfall policy when the quality set is smaller than the budget."""
    n_q = len(q.order)
    if budget <= n_q:
        return
    n_elig = int(q.eligible.sum())
    if cfg.shortfall == "take_all":
        plan.shortfall = shortfall_entry(
            budget,
            n_q,
            "take_all",
            f"budget {budget} exceeds the quality set ({n_q} candidates; rule: {q.rule}); "
            f"shortfall=take_all: selected all {n_q}, {budget - n_q} short",
        )
        return
    rest = rank_by_benefit(scores, np.flatnonzero(q.eligible & ~q.mask), tie)[: budget - n_q]
    for j, i in enumerate(rest, start=1):
        plan.reasons.append(
            f"top-up {j} of {len(rest)}: the quality set ({n_q}) is smaller than the budget {budget}; "
            f"next-best outside it by mean benefit {scores.benefit_mean[i]:.4g} "
            f"(benefits {scores.benefit_frac_pos[i]:.0%} of seeds)"
        )
    plan.status[rest] = TOP_UP
    plan.picked = np.concatenate([plan.picked, rest])
    msg = (
        f"budget {budget} exceeds the quality set ({n_q} candidates; rule: {q.rule}); "
        f"shortfall=top_up: added {len(rest)} next-best eligible candidates by mean benefit"
    )
    if n_q + len(rest) < budget:
        msg += (
            f"; the pool has only {n_elig} eligible candidates, so the selection is {budget - n_elig} short"
        )
    plan.shortfall = shortfall_entry(budget, n_q, "top_up", msg)
    plan.shortfall["topped_up"] = len(rest)


def cluster_fields(n: int, members: np.ndarray, cl: ClusterResult, ranked: np.ndarray) -> tuple:
    cluster = np.full(n, -1, dtype=np.int32)
    cluster[members] = cl.labels
    crank = np.zeros(n, dtype=np.int64)
    crank[members] = within_cluster_rank(cl.labels, ranked) + 1
    dist = np.full(n, np.nan, dtype=np.float32)
    dist[members] = cl.distances
    return cluster, crank, dist


def clustering_summary(cl: ClusterResult, picked_labels: np.ndarray, passes: int) -> dict[str, Any]:
    sizes = np.bincount(cl.labels, minlength=cl.k_used)
    chosen = np.bincount(picked_labels, minlength=cl.k_used) if len(picked_labels) else np.zeros_like(sizes)
    return {
        "k_requested": cl.k_requested,
        "k_used": cl.k_used,
        "algorithm": cl.algorithm,
        "n_iter": cl.n_iter,
        "inertia": cl.inertia,
        "cluster_sizes": sizes.tolist(),
        "selected_per_cluster": chosen.tolist(),
        "clusters_represented": int((chosen > 0).sum()),
        "round_robin_passes": passes,
    }


def ranked_plan(
    value: np.ndarray, q: QualityResult, budget: int, tie: np.ndarray, what: str
) -> Plan:
    """The B eligible candidates with the highest ``value`` (ties by id)."""
    elig = np.flatnonzero(q.eligible & np.isfinite(value))
    order = elig[np.lexsort((tie[elig], -value[elig]))]
    picked = order[:budget]
    reasons = [f"{what}: rank {r} of {len(order)} (score {value[i]:.4g})" for r, i in enumerate(picked, start=1)]
    plan = Plan(picked.astype(np.int64), reasons, status_base(q, False), score=value)
    plan.status[picked] = SELECTED
    rest = order[budget:]
    plan.explain(rest, [f"{what}: rank {r} of {len(order)} (score {value[i]:.4g}), beyond the budget {budget}"
                        for r, i in enumerate(rest, start=budget + 1)])
    plan.explain(np.flatnonzero(q.eligible & ~np.isfinite(value)), f"{what}: no finite score")
    if budget > len(order):
        plan.shortfall = all_eligible_shortfall(budget, len(order))
    return plan
