"""The built-in selection methods, one registered function each (see ``docs/method.md``).

- ``gdig``: the quality set Q is clustered with k-means on its gradient features, then
  :func:`~gdig_core.selection.clustering.round_robin` takes the best-ranked remaining candidate
  of each cluster in turn until B are chosen.
- ``quality``: the top B of Q by mean benefit, no clustering.
- ``diversity``: k-means + round robin on every eligible candidate, ranked within a cluster by
  distance to its centroid (closest first): a rule that uses no influence score.
- ``random``: B eligible candidates drawn uniformly with ``SelectionConfig.seed``.
- ``full``: every eligible candidate (B is recorded but does not limit the size).
- ``nll``: the B eligible candidates with the lowest mean target-token NLL under the scoring
  model (the ``loss`` column): a cheap model-based filter.
- ``length_ratio``, ``copy``, ``language_id``, ``cheap``: the B best by a cheap per-pair score
  (gdig_core.filters.rules: length ratio, not-a-copy, target-language identification, and the
  combined filter an MT engineer would use).
- ``opusfilter``: the B best by OpusFilter's standard chain (gdig_core.filters.opusfilter: pairs
  passing every filter first, ties by language-id confidence): the field's cleaning baseline.
- ``qe``: the B best by the LLM's dual conditional cross-entropy (gdig_core.filters.qe).
- ``oracle``: B drawn uniformly from the clean candidates (needs noise labels: an experiment's
  upper bound, never a method for real data).
"""

from __future__ import annotations

import numpy as np

from gdig_core.selection.clustering import (
    kmeans_clusters,
    renumber_by_rank,
    resolve_n_clusters,
    round_robin,
)
from gdig_core.selection.layout import BAD, NOT_REACHED, SELECTED
from gdig_core.selection.plan import (
    MethodInput,
    Plan,
    all_eligible_shortfall,
    cluster_fields,
    clustering_summary,
    ordinal,
    quality_ranks,
    ranked_plan,
    status_base,
    top_up,
)
from gdig_core.selection.quality import QualityResult, SelectionError
from gdig_core.selection.registry import register

#: Methods that rank by a cheap per-pair text score (gdig_core.filters.rules), by score name.
TEXT_FILTERS = {"length_ratio": "length_ratio", "copy": "copy", "language_id": "language_id", "cheap": "combined",
                "opusfilter": "opusfilter"}


@register("gdig")
def _gdig(inp: MethodInput) -> Plan:
    return _clustered(inp, influence=True)


@register("quality")
def _quality(inp: MethodInput) -> Plan:
    scores, q, budget = inp.scores, inp.q, inp.budget
    picked = q.order[:budget]
    n_q = len(q.order)
    reasons = [
        f"quality: benefits {scores.benefit_frac_pos[i]:.0%} of {len(scores.seed_ids)} seeds "
        f"(rule: {q.rule}); rank {r} of {n_q} by mean benefit {scores.benefit_mean[i]:.4g}"
        for r, i in enumerate(picked, start=1)
    ]
    plan = Plan(picked, reasons, status_base(q, True), quality_rank=quality_ranks(q))
    plan.status[picked] = SELECTED
    top_up(scores, q, inp.cfg, budget, plan, inp.tie)
    plan.score = scores.benefit_mean
    plan.explain(q.order[budget:], [f"quality rank {r} of {n_q} by mean benefit, beyond the budget {budget}"
                                    for r in range(budget + 1, n_q + 1)])
    return plan


@register("diversity")
def _diversity(inp: MethodInput) -> Plan:
    return _clustered(inp, influence=False)


def _clustered(inp: MethodInput, influence: bool) -> Plan:
    """gdig (``influence``: k-means on Q, ranked by mean benefit) or diversity (k-means on every
    eligible candidate, ranked by distance to the centroid)."""
    scores, q, cfg, budget, tie = inp.scores, inp.q, inp.cfg, inp.budget, inp.tie
    n = len(q.eligible)
    if influence:
        members = q.order
    else:
        members = np.flatnonzero(q.eligible)
        # Id order, so k-means sees the same rows in the same order whatever the shard order.
        members = members[np.argsort(tie[members], kind="stable")]
    status = status_base(q, influence)
    qrank = quality_ranks(q) if influence else None
    if len(members) == 0:
        plan = Plan(np.zeros(0, dtype=np.int64), [], status, quality_rank=qrank)
        if influence:
            top_up(scores, q, cfg, budget, plan, tie)
            plan.score = scores.benefit_mean
        return plan
    k = resolve_n_clusters(cfg, budget)
    everyone = len(members) == n and bool((members == np.arange(n)).all())
    feats = scores.features if everyone else scores.features[members]  # no 1 GB copy at pool scale
    cl = kmeans_clusters(feats, k, cfg.seed, cfg.kmeans_algorithm, cfg.kmeans_max_iter)
    if influence:
        ranked = np.arange(len(members))  # members is already the quality order
    else:
        # Non-influence rule: closest to the centroid first (most typical of its cluster).
        ranked = np.lexsort((tie[members], cl.distances))
    cl = renumber_by_rank(cl, ranked)
    local = round_robin(cl.labels, ranked, budget)
    picked = members[local]
    cluster, crank, dist = cluster_fields(n, members, cl, ranked)
    sizes = np.bincount(cl.labels, minlength=cl.k_used)
    reasons = []
    for i in picked:
        c, r = int(cluster[i]), int(crank[i])
        where = f"cluster {c} ({sizes[c]} members, k={cl.k_used}): {ordinal(r)} in it, round-robin pass {r}"
        if influence:
            reasons.append(
                f"gdig: benefits {scores.benefit_frac_pos[i]:.0%} of {len(scores.seed_ids)} seeds "
                f"(rule: {q.rule}); quality rank {qrank[i]} of {len(members)} "
                f"(mean benefit {scores.benefit_mean[i]:.4g}); {where}"
            )
        else:
            reasons.append(f"diversity: {where}, ranked by distance to centroid {dist[i]:.4g}")
    status[picked] = SELECTED
    passes = int(crank[picked].max()) if len(picked) else 0
    plan = Plan(
        picked,
        reasons,
        status,
        qrank,
        cluster,
        crank,
        dist,
        clustering_summary(cl, cl.labels[local], passes),
    )
    if influence:
        top_up(scores, q, cfg, budget, plan, tie)
        plan.score = scores.benefit_mean
    elif budget > len(members):
        plan.shortfall = all_eligible_shortfall(budget, len(members))
    rest = np.flatnonzero(plan.status == NOT_REACHED)
    filled = f"the budget {budget} was filled after {passes} round-robin passes over {cl.k_used} clusters"
    if influence:
        plan.explain(rest, [
            f"in the quality set (rank {qrank[i]} of {len(members)}), cluster {cluster[i]} where it ranks "
            f"{ordinal(int(crank[i]))} by mean benefit; {filled}: "
            + ("its pass came, but the budget ran out before its cluster's turn" if crank[i] == passes
               else f"its turn would have been pass {crank[i]}")
            for i in rest
        ])
    else:
        plan.explain(rest, [
            f"cluster {c}, {ordinal(r)} closest to its centroid (distance {d:.4g}); {filled}"
            for c, r, d in zip(cluster[rest].tolist(), crank[rest].tolist(), dist[rest].tolist(), strict=True)
        ])
    return plan


@register("random")
def _random(inp: MethodInput) -> Plan:
    return _random_plan(inp.q, inp.cfg.seed, inp.budget, inp.tie)


def _random_plan(q: QualityResult, seed: int, budget: int, tie: np.ndarray) -> Plan:
    elig = np.flatnonzero(q.eligible)
    elig = elig[np.argsort(tie[elig], kind="stable")]  # id order: independent of shard order
    rng = np.random.default_rng(seed)
    take = min(budget, len(elig))
    picked = elig[rng.choice(len(elig), size=take, replace=False)] if take else elig[:0]
    reasons = [
        f"random: draw {r} of {take} (uniform over {len(elig)} eligible, seed {seed})"
        for r in range(1, take + 1)
    ]
    plan = Plan(picked.astype(np.int64), reasons, status_base(q, False))
    plan.status[picked] = SELECTED
    plan.explain(np.flatnonzero(plan.status == NOT_REACHED),
                 f"not drawn: {take} of {len(elig)} eligible drawn with seed {seed}")
    if budget > len(elig):
        plan.shortfall = all_eligible_shortfall(budget, len(elig))
    return plan


@register("full", uses_budget=False)
def _full(inp: MethodInput) -> Plan:
    q, tie = inp.q, inp.tie
    elig = np.flatnonzero(q.eligible)
    picked = elig[np.argsort(tie[elig], kind="stable")]
    plan = Plan(
        picked.astype(np.int64), ["full pool: every eligible candidate"] * len(picked), status_base(q, False)
    )
    plan.status[picked] = SELECTED
    return plan


@register("nll")
def _nll(inp: MethodInput) -> Plan:
    return ranked_plan(-inp.scores.loss, inp.q, inp.budget, inp.tie, "lowest target NLL")


def _text_filter(kind: str, score_name: str) -> None:
    @register(kind)
    def _plan(inp: MethodInput) -> Plan:
        return ranked_plan(inp.ctx.text_score(score_name), inp.q, inp.budget, inp.tie, f"{kind} filter")


for _kind, _score in TEXT_FILTERS.items():
    _text_filter(_kind, _score)


@register("qe")
def _qe(inp: MethodInput) -> Plan:
    return ranked_plan(inp.ctx.text_score("qe"), inp.q, inp.budget, inp.tie, "QE (dual cross-entropy)")


@register("oracle", needs_noise_labels=True)
def _oracle(inp: MethodInput) -> Plan:
    q, ctx = inp.q, inp.ctx
    if ctx.labels is None or not (ctx.labels != "").any():
        raise SelectionError("the clean oracle needs noise labels (data.noise, or a pool with a 'noise' column)")
    clean = ctx.labels == "clean"
    only_clean = QualityResult(q.eligible & clean, q.mask, q.order, q.excluded, q.rule)
    plan = _random_plan(only_clean, inp.cfg.seed, inp.budget, inp.tie)
    plan.status[q.eligible & ~clean] = NOT_REACHED
    plan.status[~q.eligible] = BAD
    plan.explain(np.flatnonzero(q.eligible & ~clean), "not a clean pair: the oracle draws from clean pairs only")
    plan.explain(np.flatnonzero(only_clean.eligible & (plan.status == NOT_REACHED)),
                 f"not drawn: {len(plan.picked)} of {int(only_clean.eligible.sum())} clean eligible pairs drawn "
                 f"with seed {inp.cfg.seed}")
    plan.reasons = [r.replace("random:", "oracle (clean pairs only):") for r in plan.reasons]
    plan.score = clean.astype(np.float64)
    return plan
