"""Selection (design section 3, steps 5-7): quality rule, gradient k-means, cluster-balanced
resampling, the baselines, and the files that record every decision.

Methods (``SelectionConfig.methods``), each for a budget B:

- ``gdig``: the quality set Q (see :func:`quality_rank`) is clustered with k-means on its gradient
  features (Euclidean), then :func:`round_robin` takes the best-ranked remaining candidate of
  each cluster in turn until B are chosen.
- ``quality``: the top B of Q by mean benefit, no clustering.
- ``diversity``: k-means + round robin on every eligible candidate, ranked within a cluster by
  distance to its centroid (closest first): a rule that uses no influence score.
- ``random``: B eligible candidates drawn uniformly with ``SelectionConfig.seed``.
- ``full``: every eligible candidate (B is recorded but does not limit the size).
- ``nll``: the B eligible candidates with the lowest mean target-token NLL under the scoring
  model (the ``loss`` column): a cheap model-based filter.
- ``length_ratio``, ``copy``, ``language_id``, ``cheap``: the B best by a cheap per-pair score
  (gdig_core.text_filters: length ratio, not-a-copy, target-language identification, and the
  combined filter an MT engineer would use).
- ``oracle``: B drawn uniformly from the clean candidates (needs noise labels: an experiment's
  upper bound, never a method for real data).

A method runs as a :class:`~gdig_core.config.MethodSpec`: a name (its directory), the kind above,
and optional overrides (score variant, quality rule, tau, top_k, seed...) and cheap pre-filters
whose rejects are not eligible.

Eligible: ``ok`` is True and the summaries and the feature row are finite. Other candidates are
excluded from every method and counted by reason in ``summary.json``.

Determinism: ranks break ties by candidate id, k-means uses ``SelectionConfig.seed``, clusters are
renumbered so that cluster 0 holds the best-ranked member, and no output holds a time stamp, so
the same inputs give byte-identical files.

Budget larger than what a method can supply (policy ``SelectionConfig.shortfall``):
``take_all`` selects all of Q and records the shortfall; ``top_up`` fills the rest from the
next-best eligible candidates outside Q by mean benefit (status ``top_up``, with that reason).
When even the eligible pool is too small every eligible candidate is taken. Either way the
selection is never silently short: ``summary.json`` has a ``shortfall`` entry with a message,
it is logged as a warning, and :class:`SelectionResult` carries it.

Files written (atomically) into ``out_dir`` by :func:`select`:

- ``selected.jsonl`` / ``selected.parquet``: the pair schema ``id, src_lang, tgt_lang, src, tgt``
  plus ``score`` (mean benefit), ``rank`` (1 = picked first), ``cluster`` (null when the method
  does not cluster) and ``reason``; rows in rank order.
- ``candidates.parquet``: one row per scored candidate with its status (``selected``, ``top_up``,
  ``bad``, ``below_quality``, ``not_reached``), quality rank, cluster, rank within the cluster and
  distance to the centroid: what :mod:`gdig_core.explain` needs to say why a candidate was or
  was not chosen without re-running k-means.
- ``summary.json``: sizes, exclusions, shortfall, cluster histogram, score distributions, config.
- ``score_hist.png`` and (clustering methods) ``clusters.png``.

``summary.json`` is written last (an old one is removed first), so a directory holding one is a
complete selection.

Use :func:`selection_dir` for the conventional layout ``<root>/<method>/b<budget>`` (``full`` has
one directory, ``<root>/full/all``) and :func:`run_selection` to run every method and budget
(it also writes ``<root>/index.json``, one entry per selection). In a run directory the root is
``<run_dir>/selection``, which is where :mod:`gdig_core.explain` looks.

Public API: :func:`select`, :func:`select_from_files`, :func:`run_selection`,
:func:`quality_mask`, :func:`quality_rank`, :func:`kmeans_clusters`, :func:`round_robin`,
:func:`selection_dir`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gdig_core.config import METHOD_KINDS, MethodSpec, SelectionConfig, method_spec
from gdig_core.io import atomic_path, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from gdig_core.scores import ScoreTable

log = logging.getLogger(__name__)

METHODS = METHOD_KINDS
#: Methods that rank by a cheap per-pair text score (gdig_core.text_filters), by score name.
TEXT_FILTERS = {"length_ratio": "length_ratio", "copy": "copy", "language_id": "language_id", "cheap": "combined"}
PAIR_COLUMNS = ("id", "src_lang", "tgt_lang", "src", "tgt")
#: Every file :func:`select` may write into its output directory.
OUTPUT_FILES = (
    "selected.jsonl",
    "selected.parquet",
    "candidates.parquet",
    "summary.json",
    "score_hist.png",
    "clusters.png",
)
#: Status of a candidate in ``candidates.parquet`` (the codes index this tuple).
STATUSES = ("selected", "top_up", "bad", "below_quality", "not_reached")
SELECTED, TOP_UP, BAD, BELOW_QUALITY, NOT_REACHED = range(len(STATUSES))
#: ``kmeans_algorithm=auto`` fits on at most this many points per cluster (faiss's default).
SAMPLE_PER_CLUSTER = 256
#: k-means++ initialisation runs on at most this many points per cluster.
INIT_PER_CLUSTER = 4
#: frac_pos is a ratio of counts; the slack keeps tau=0.9 with 9 of 10 seeds inside the set.
_TAU_SLACK = 1e-9
_CHUNK_ROWS = 65_536


class SelectionError(ValueError):
    """Invalid selection input (budget, method, ids missing from the pool...)."""


# --------------------------------------------------------------------------------------------
# Quality (step 5)


@dataclass
class QualityResult:
    """The quality set and the eligibility that precedes it (arrays over the N candidates)."""

    eligible: np.ndarray  # bool [N]
    mask: np.ndarray  # bool [N]: in the quality set
    order: np.ndarray  # int64 [|Q|]: quality-set indices, best first
    excluded: dict[str, int]  # reason -> count, for candidates that are not eligible
    rule: str  # human-readable rule


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
    for s in range(0, len(features), _CHUNK_ROWS):
        out[s : s + _CHUNK_ROWS] = np.isfinite(features[s : s + _CHUNK_ROWS].sum(axis=1, dtype=np.float64))
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
    scores: ScoreTable, cfg: SelectionConfig, budget: int, tie: np.ndarray | None = None
) -> QualityResult:
    """Eligibility, the quality set and its ranking by mean benefit (ties by id)."""
    eligible, excluded = eligible_mask(scores)
    mask = quality_mask(scores, cfg, budget, eligible)
    order = rank_by_benefit(scores, np.flatnonzero(mask), tie)
    return QualityResult(eligible, mask, order, excluded, describe_rule(cfg, budget))


# --------------------------------------------------------------------------------------------
# Diversity (step 6)


@dataclass
class ClusterResult:
    labels: np.ndarray  # int32 [n], 0..k_used-1
    centers: np.ndarray  # float32 [k_used, d]
    distances: np.ndarray  # float32 [n]: Euclidean distance to the assigned centre
    k_requested: int
    k_used: int
    algorithm: str
    n_iter: int
    inertia: float


def resolve_n_clusters(cfg: SelectionConfig, budget: int) -> int:
    """K as configured: ``n_clusters`` if set, else budget // cluster_size_hint (at least 2).

    :func:`kmeans_clusters` caps it at the number of points and reports both.
    """
    return cfg.n_clusters if cfg.n_clusters is not None else max(2, budget // cfg.cluster_size_hint)


def kmeans_clusters(
    features: np.ndarray,
    k: int,
    seed: int = 0,
    algorithm: Literal["auto", "lloyd", "minibatch"] = "auto",
    max_iter: int = 30,
) -> ClusterResult:
    """k-means with Euclidean distance; K is capped at the number of points.

    ``auto`` (the default): Lloyd's algorithm (at most ``max_iter`` iterations) fitted on at most
    :data:`SAMPLE_PER_CLUSTER` x K points, a seeded uniform subsample when there are more, as
    faiss does; then every point is assigned to its nearest centre. Cost is bounded by K, not by
    the pool: O(max_iter * 256 K^2 d) + O(n K d). ``lloyd``: Lloyd on every point.
    ``minibatch``: sklearn's MiniBatchKMeans (batch 4096). ``auto`` and ``lloyd`` start from
    k-means++ run on :data:`INIT_PER_CLUSTER` x K sampled points (as MiniBatchKMeans does): full
    k-means++ costs K passes over the data and dominated everything at pool scale.
    Empty clusters (duplicate points) are dropped and the rest renumbered 0..k_used-1.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans  # slow import, only when clustering

    x = np.ascontiguousarray(features, dtype=np.float32)
    n = len(x)
    if n == 0:
        raise SelectionError("k-means on zero points")
    k_req = int(k)
    k_fit = max(1, min(k_req, n))
    fit_x = x
    if algorithm == "auto" and n > SAMPLE_PER_CLUSTER * k_fit:
        rows = np.random.default_rng(seed).choice(n, SAMPLE_PER_CLUSTER * k_fit, replace=False)
        fit_x = x[np.sort(rows)]
    with warnings.catch_warnings():
        # Fewer distinct points than K is legitimate here; it is reported as k_used < k.
        warnings.simplefilter("ignore", category=Warning)
        init: Any = "k-means++"
        if algorithm != "minibatch" and len(fit_x) > INIT_PER_CLUSTER * k_fit:
            init = _plusplus_init(fit_x, k_fit, seed)
        if algorithm == "minibatch":
            model = MiniBatchKMeans(
                n_clusters=k_fit,
                batch_size=4096,
                max_iter=max_iter,
                n_init=1,
                random_state=seed,
                max_no_improvement=10,
                reassignment_ratio=0.01,
            )
        else:
            model = KMeans(
                n_clusters=k_fit, init=init, n_init=1, max_iter=max_iter, random_state=seed, algorithm="lloyd"
            )
        model.fit(fit_x)
        labels = np.asarray(model.labels_ if fit_x is x else model.predict(x), dtype=np.int64)
    centers = np.asarray(model.cluster_centers_, dtype=np.float32)
    used = np.unique(labels)
    remap = np.full(k_fit, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    labels = remap[labels].astype(np.int32)
    centers = centers[used]
    distances = _centre_distances(x, centers, labels)
    name = algorithm if algorithm != "auto" else ("lloyd" if fit_x is x else f"lloyd-sampled({len(fit_x)})")
    return ClusterResult(
        labels=labels,
        centers=centers,
        distances=distances,
        k_requested=k_req,
        k_used=len(used),
        algorithm=name,
        n_iter=int(getattr(model, "n_iter_", 0)),
        inertia=float(np.square(distances, dtype=np.float64).sum()),
    )


def _plusplus_init(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ centres from a seeded subsample of INIT_PER_CLUSTER x k points."""
    from sklearn.cluster import kmeans_plusplus
    from threadpoolctl import threadpool_limits

    rows = np.sort(np.random.default_rng(seed + 1).choice(len(x), INIT_PER_CLUSTER * k, replace=False))
    # One thread: its many skinny distance products ran 5-8x slower threaded on a busy 2-core box.
    with threadpool_limits(1):
        centres, _ = kmeans_plusplus(x[rows], k, random_state=seed)
    return centres


def _centre_distances(x: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), _CHUNK_ROWS):
        diff = x[s : s + _CHUNK_ROWS] - centers[labels[s : s + _CHUNK_ROWS]]
        out[s : s + _CHUNK_ROWS] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def renumber_by_rank(clusters: ClusterResult, ranked: np.ndarray) -> ClusterResult:
    """Renumber clusters so that cluster 0 holds the best-ranked point, 1 the next cluster's...

    ``ranked`` is a permutation of the clustered points, best first. The numbering then depends
    only on the ranking and the partition, which makes outputs easy to read and compare.
    """
    _, first = np.unique(clusters.labels[ranked], return_index=True)
    old_in_order = clusters.labels[ranked][np.sort(first)]
    remap = np.empty(clusters.k_used, dtype=np.int32)
    remap[old_in_order] = np.arange(clusters.k_used, dtype=np.int32)
    clusters.labels = remap[clusters.labels]
    clusters.centers = clusters.centers[old_in_order]
    return clusters


def within_cluster_rank(labels: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """0-based rank of each point inside its cluster, following the global order ``ranked``.

    Returns an array over all ``labels``; points missing from ``ranked`` get -1.
    """
    labels = np.asarray(labels)
    ranked = np.asarray(ranked, dtype=np.int64)
    n = len(ranked)
    lab = labels[ranked]
    by_label = np.argsort(lab, kind="stable")  # grouped by cluster, rank order kept inside
    sorted_lab = lab[by_label]
    starts = np.flatnonzero(np.r_[True, sorted_lab[1:] != sorted_lab[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    in_rank_order = np.empty(n, dtype=np.int64)
    in_rank_order[by_label] = np.arange(n) - group_start
    out = np.full(len(labels), -1, dtype=np.int64)  # -1: not in ``ranked``
    out[ranked] = in_rank_order
    return out


def round_robin(labels: np.ndarray, ranked: np.ndarray, budget: int) -> np.ndarray:
    """Cluster-balanced resampling: the points picked, in pick order.

    Pass 1 takes the best-ranked point of every cluster, pass 2 the second best, and so on;
    inside a pass clusters are visited in the order of their best member's global rank. A
    cluster that runs out is skipped. ``labels[i]`` is point i's cluster, ``ranked`` the points
    best first. Fully vectorised (sort by (pass, cluster order)) so 1M points take seconds.
    """
    labels = np.asarray(labels)
    ranked = np.asarray(ranked, dtype=np.int64)
    if budget <= 0 or len(ranked) == 0:
        return np.zeros(0, dtype=np.int64)
    within = within_cluster_rank(labels, ranked)
    uniq, first, inverse = np.unique(labels[ranked], return_index=True, return_inverse=True)
    visit = np.empty(len(uniq), dtype=np.int64)
    visit[np.argsort(first)] = np.arange(len(uniq))
    cluster_visit = np.empty(len(labels), dtype=np.int64)
    cluster_visit[ranked] = visit[inverse.reshape(-1)]
    key = within[ranked] * len(uniq) + cluster_visit[ranked]
    pick = np.argsort(key, kind="stable")[:budget]
    return ranked[pick]


# --------------------------------------------------------------------------------------------
# Methods


@dataclass
class _Plan:
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


@dataclass
class SelectionResult:
    """The outcome of :func:`select`; the files in ``out_dir`` are the durable record."""

    method: str
    budget: int
    out_dir: Path
    ids: list[str]
    shortfall: dict[str, Any] | None
    summary: dict[str, Any]
    files: dict[str, Path]

    @property
    def size(self) -> int:
        return len(self.ids)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _status_base(q: QualityResult, use_quality: bool) -> np.ndarray:
    status = np.full(len(q.eligible), NOT_REACHED, dtype=np.int8)
    if use_quality:
        status[~q.mask] = BELOW_QUALITY
    status[~q.eligible] = BAD
    return status


def _quality_ranks(q: QualityResult) -> np.ndarray:
    out = np.zeros(len(q.mask), dtype=np.int64)
    out[q.order] = np.arange(1, len(q.order) + 1)
    return out


def _shortfall(budget: int, available: int, policy: str, message: str) -> dict[str, Any]:
    return {"requested": budget, "available": available, "policy": policy, "message": message}


def _all_eligible_shortfall(budget: int, n_eligible: int) -> dict[str, Any]:
    """A baseline's budget beyond the whole eligible pool: it takes them all, and says so."""
    return _shortfall(
        budget, n_eligible, "take_all",
        f"budget {budget} exceeds the {n_eligible} eligible candidates; selected all of them",
    )


def _top_up(
    scores: ScoreTable, q: QualityResult, cfg: SelectionConfig, budget: int, plan: _Plan, tie: np.ndarray
) -> None:
    """Apply the shortfall policy when the quality set is smaller than the budget."""
    n_q = len(q.order)
    if budget <= n_q:
        return
    n_elig = int(q.eligible.sum())
    if cfg.shortfall == "take_all":
        plan.shortfall = _shortfall(
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
    plan.shortfall = _shortfall(budget, n_q, "top_up", msg)
    plan.shortfall["topped_up"] = len(rest)


def _plan_quality(
    scores: ScoreTable, q: QualityResult, cfg: SelectionConfig, budget: int, tie: np.ndarray
) -> _Plan:
    picked = q.order[:budget]
    n_q = len(q.order)
    reasons = [
        f"quality: benefits {scores.benefit_frac_pos[i]:.0%} of {len(scores.seed_ids)} seeds "
        f"(rule: {q.rule}); rank {r} of {n_q} by mean benefit {scores.benefit_mean[i]:.4g}"
        for r, i in enumerate(picked, start=1)
    ]
    plan = _Plan(picked, reasons, _status_base(q, True), quality_rank=_quality_ranks(q))
    plan.status[picked] = SELECTED
    _top_up(scores, q, cfg, budget, plan, tie)
    return plan


def _cluster_fields(n: int, members: np.ndarray, cl: ClusterResult, ranked: np.ndarray) -> tuple:
    cluster = np.full(n, -1, dtype=np.int32)
    cluster[members] = cl.labels
    crank = np.zeros(n, dtype=np.int64)
    crank[members] = within_cluster_rank(cl.labels, ranked) + 1
    dist = np.full(n, np.nan, dtype=np.float32)
    dist[members] = cl.distances
    return cluster, crank, dist


def _clustering_summary(cl: ClusterResult, picked_labels: np.ndarray, passes: int) -> dict[str, Any]:
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


def _plan_clustered(
    scores: ScoreTable,
    q: QualityResult,
    cfg: SelectionConfig,
    budget: int,
    tie: np.ndarray,
    method: Literal["gdig", "diversity"],
) -> _Plan:
    n = len(q.eligible)
    if method == "gdig":
        members = q.order
    else:
        members = np.flatnonzero(q.eligible)
        # Id order, so k-means sees the same rows in the same order whatever the shard order.
        members = members[np.argsort(tie[members], kind="stable")]
    status = _status_base(q, method == "gdig")
    qrank = _quality_ranks(q) if method == "gdig" else None
    if len(members) == 0:
        plan = _Plan(np.zeros(0, dtype=np.int64), [], status, quality_rank=qrank)
        if method == "gdig":
            _top_up(scores, q, cfg, budget, plan, tie)
        return plan
    k = resolve_n_clusters(cfg, budget)
    everyone = len(members) == n and bool((members == np.arange(n)).all())
    feats = scores.features if everyone else scores.features[members]  # no 1 GB copy at pool scale
    cl = kmeans_clusters(feats, k, cfg.seed, cfg.kmeans_algorithm, cfg.kmeans_max_iter)
    if method == "gdig":
        ranked = np.arange(len(members))  # members is already the quality order
    else:
        # Non-influence rule: closest to the centroid first (most typical of its cluster).
        ranked = np.lexsort((tie[members], cl.distances))
    cl = renumber_by_rank(cl, ranked)
    local = round_robin(cl.labels, ranked, budget)
    picked = members[local]
    cluster, crank, dist = _cluster_fields(n, members, cl, ranked)
    sizes = np.bincount(cl.labels, minlength=cl.k_used)
    reasons = []
    for i in picked:
        c, r = int(cluster[i]), int(crank[i])
        where = f"cluster {c} ({sizes[c]} members, k={cl.k_used}): {_ordinal(r)} in it, round-robin pass {r}"
        if method == "gdig":
            reasons.append(
                f"gdig: benefits {scores.benefit_frac_pos[i]:.0%} of {len(scores.seed_ids)} seeds "
                f"(rule: {q.rule}); quality rank {qrank[i]} of {len(members)} "
                f"(mean benefit {scores.benefit_mean[i]:.4g}); {where}"
            )
        else:
            reasons.append(f"diversity: {where}, ranked by distance to centroid {dist[i]:.4g}")
    status[picked] = SELECTED
    passes = int(crank[picked].max()) if len(picked) else 0
    plan = _Plan(
        picked,
        reasons,
        status,
        qrank,
        cluster,
        crank,
        dist,
        _clustering_summary(cl, cl.labels[local], passes),
    )
    if method == "gdig":
        _top_up(scores, q, cfg, budget, plan, tie)
    elif budget > len(members):
        plan.shortfall = _all_eligible_shortfall(budget, len(members))
    return plan


def _plan_random(q: QualityResult, cfg: SelectionConfig, budget: int, tie: np.ndarray) -> _Plan:
    elig = np.flatnonzero(q.eligible)
    elig = elig[np.argsort(tie[elig], kind="stable")]  # id order: independent of shard order
    rng = np.random.default_rng(cfg.seed)
    take = min(budget, len(elig))
    picked = elig[rng.choice(len(elig), size=take, replace=False)] if take else elig[:0]
    reasons = [
        f"random: draw {r} of {take} (uniform over {len(elig)} eligible, seed {cfg.seed})"
        for r in range(1, take + 1)
    ]
    plan = _Plan(picked.astype(np.int64), reasons, _status_base(q, False))
    plan.status[picked] = SELECTED
    if budget > len(elig):
        plan.shortfall = _all_eligible_shortfall(budget, len(elig))
    return plan


def _plan_full(q: QualityResult, tie: np.ndarray) -> _Plan:
    elig = np.flatnonzero(q.eligible)
    picked = elig[np.argsort(tie[elig], kind="stable")]
    plan = _Plan(
        picked.astype(np.int64), ["full pool: every eligible candidate"] * len(picked), _status_base(q, False)
    )
    plan.status[picked] = SELECTED
    return plan


def _spec(method: str | MethodSpec) -> MethodSpec:
    if isinstance(method, str) and method not in METHODS:
        raise SelectionError(f"unknown selection method {method!r}; expected one of {', '.join(METHODS)}")
    return method_spec(method)


def effective_config(cfg: SelectionConfig, spec: MethodSpec) -> SelectionConfig:
    """The selection section with the method's own overrides applied."""
    keys = ("quality_rule", "tau", "top_k", "min_mean", "shortfall", "seed")
    update = {k: getattr(spec, k) for k in keys if getattr(spec, k) is not None}
    return cfg.model_copy(update=update) if update else cfg


@dataclass
class PairContext:
    """What the text-based methods and the oracle need beyond the scores, aligned to score rows."""

    src: list[str] | None = None
    tgt: list[str] | None = None
    tgt_lang: str | None = None
    labels: np.ndarray | None = None  # object [N]: noise label per score row ("" when unknown)
    _text: dict[str, np.ndarray] = field(default_factory=dict)

    def text_score(self, name: str) -> np.ndarray:
        """A cheap per-pair score (higher = more likely clean), computed once per context."""
        if name not in self._text:
            if self.src is None or self.tgt is None:
                raise SelectionError(f"the {name!r} score needs the pool's source and target texts")
            from gdig_core.text_filters import cheap_scores

            self._text.update(cheap_scores(self.src, self.tgt, self.tgt_lang or "en"))
        return self._text[name]


def pair_context(
    scores: ScoreTable, pool: pa.Table | None, labels: dict[str, str] | None, tgt_lang: str | None = None
) -> PairContext:
    """Align the pool's texts and the noise labels to the rows of ``scores``."""
    ctx = PairContext(tgt_lang=tgt_lang)
    if pool is not None:
        rows = _pool_rows(pool, [str(i) for i in scores.ids])
        ctx.src, ctx.tgt = rows.column("src").to_pylist(), rows.column("tgt").to_pylist()
        if tgt_lang is None and rows.num_rows:
            ctx.tgt_lang = rows.column("tgt_lang")[0].as_py()
    if labels:
        ctx.labels = np.array([labels.get(str(i), "") for i in scores.ids], dtype=object)
    return ctx


def _prefiltered(q: QualityResult, spec: MethodSpec, ctx: PairContext) -> QualityResult:
    """Drop what the method's cheap pre-filters reject from eligibility (and the quality set)."""
    if not spec.prefilter:
        return q
    from gdig_core.text_filters import rejected

    excluded = dict(q.excluded)
    eligible = q.eligible.copy()
    for name in spec.prefilter:
        bad = rejected(name, ctx.text_score(name)) & eligible
        excluded[f"prefilter_{name}"] = int(bad.sum())
        eligible &= ~bad
    keep = eligible[q.order]
    return QualityResult(eligible, q.mask & eligible, q.order[keep], excluded, q.rule + " after pre-filters "
                         + "+".join(spec.prefilter))


def _plan_ranked(
    value: np.ndarray, q: QualityResult, budget: int, tie: np.ndarray, what: str
) -> _Plan:
    """The B eligible candidates with the highest ``value`` (ties by id)."""
    elig = np.flatnonzero(q.eligible & np.isfinite(value))
    order = elig[np.lexsort((tie[elig], -value[elig]))]
    picked = order[:budget]
    reasons = [f"{what}: rank {r} of {len(order)} (score {value[i]:.4g})" for r, i in enumerate(picked, start=1)]
    plan = _Plan(picked.astype(np.int64), reasons, _status_base(q, False), score=value)
    plan.status[picked] = SELECTED
    if budget > len(order):
        plan.shortfall = _all_eligible_shortfall(budget, len(order))
    return plan


def _plan_oracle(q: QualityResult, cfg: SelectionConfig, budget: int, tie: np.ndarray, ctx: PairContext) -> _Plan:
    if ctx.labels is None or not (ctx.labels != "").any():
        raise SelectionError("the clean oracle needs noise labels (data.noise, or a pool with a 'noise' column)")
    clean = ctx.labels == "clean"
    plan = _plan_random(QualityResult(q.eligible & clean, q.mask, q.order, q.excluded, q.rule), cfg, budget, tie)
    plan.status[q.eligible & ~clean] = NOT_REACHED
    plan.status[~q.eligible] = BAD
    plan.reasons = [r.replace("random:", "oracle (clean pairs only):") for r in plan.reasons]
    plan.score = clean.astype(np.float64)
    return plan


def plan_selection(
    scores: ScoreTable,
    cfg: SelectionConfig,
    method: str | MethodSpec,
    budget: int,
    ctx: PairContext | None = None,
) -> tuple[_Plan, QualityResult]:
    """Decide a selection without writing anything (see :func:`select`)."""
    check_budget(budget)
    spec = _spec(method)
    cfg = effective_config(cfg, spec)
    ctx = ctx or PairContext()
    try:
        scores = scores.for_variant(spec.variant)
    except KeyError as err:
        raise SelectionError(str(err.args[0])) from None
    tie = id_order(scores.ids)
    q = _prefiltered(quality_rank(scores, cfg, budget, tie), spec, ctx)
    kind = spec.method
    if kind == "quality":
        plan = _plan_quality(scores, q, cfg, budget, tie)
    elif kind in ("gdig", "diversity"):
        plan = _plan_clustered(scores, q, cfg, budget, tie, kind)  # type: ignore[arg-type]
    elif kind == "random":
        plan = _plan_random(q, cfg, budget, tie)
    elif kind == "full":
        plan = _plan_full(q, tie)
    elif kind == "nll":
        plan = _plan_ranked(-scores.loss, q, budget, tie, "lowest target NLL")
    elif kind in TEXT_FILTERS:
        plan = _plan_ranked(ctx.text_score(TEXT_FILTERS[kind]), q, budget, tie, f"{kind} filter")
    elif kind == "oracle":
        plan = _plan_oracle(q, cfg, budget, tie, ctx)
    else:  # pragma: no cover - MethodSpec validates the kind
        raise SelectionError(f"unknown selection method {kind!r}")
    if plan.score is None and kind in ("gdig", "quality"):
        plan.score = scores.benefit_mean
    return plan, q


def check_budget(budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise SelectionError(f"budget must be a positive integer, got {budget!r}")


# --------------------------------------------------------------------------------------------
# Output


def selection_dir(root: str | Path, name: str, budget: int, kind: str | None = None) -> Path:
    """Conventional output directory: ``<root>/<name>/b<budget>``; a method of kind ``full``
    (default: named ``full``) has one, ``<root>/<name>/all``."""
    return Path(root) / name / ("all" if (kind or name) == "full" else f"b{int(budget)}")


def _pool_rows(pool: pa.Table, ids: Sequence[str]) -> pa.Table:
    missing_cols = [c for c in PAIR_COLUMNS if c not in pool.column_names]
    if missing_cols:
        raise SelectionError(f"pool table lacks columns {missing_cols}; expected {list(PAIR_COLUMNS)}")
    pool_ids = pool.column("id").cast(pa.string())
    if pc.count_distinct(pool_ids).as_py() != len(pool_ids):
        raise SelectionError("pool ids are not unique")
    idx = pc.index_in(pa.array(list(ids), type=pa.string()), value_set=pool_ids)
    if idx.null_count:
        lost = [ids[i] for i in np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))[:5]]
        raise SelectionError(f"{idx.null_count} selected ids are not in the pool table, e.g. {lost}")
    rows = pool.select(list(PAIR_COLUMNS)).take(idx)
    return pa.table({c: rows.column(c).cast(pa.string()) for c in PAIR_COLUMNS})


def _selected_table(scores: ScoreTable, pool: pa.Table, plan: _Plan) -> pa.Table:
    picked = plan.picked
    ids = [str(scores.ids[i]) for i in picked]
    table = _pool_rows(pool, ids)
    cluster = plan.cluster[picked] if plan.cluster is not None else np.full(len(picked), -1, np.int32)
    score = plan.score if plan.score is not None else scores.benefit_mean
    table = table.append_column("score", pa.array(score[picked], type=pa.float64(), from_pandas=True))
    table = table.append_column("rank", pa.array(np.arange(1, len(picked) + 1), type=pa.int64()))
    table = table.append_column("cluster", pa.array(cluster, type=pa.int32(), mask=cluster < 0))
    return table.append_column("reason", pa.array(plan.reasons, type=pa.string()))


def _candidates_table(scores: ScoreTable, plan: _Plan) -> pa.Table:
    n = len(scores.ids)
    rank = np.zeros(n, dtype=np.int64)
    rank[plan.picked] = np.arange(1, len(plan.picked) + 1)

    def opt_int(a: np.ndarray | None, typ: pa.DataType) -> pa.Array:
        a = np.zeros(n, dtype=np.int64) if a is None else a
        return pa.array(a, type=typ, mask=a <= 0)

    cluster = plan.cluster if plan.cluster is not None else np.full(n, -1, np.int32)
    dist = plan.distance if plan.distance is not None else np.full(n, np.nan, np.float32)
    return pa.table(
        {
            "id": pa.array([str(i) for i in scores.ids], type=pa.string()),
            "status": pa.DictionaryArray.from_arrays(
                pa.array(plan.status, type=pa.int8()), pa.array(STATUSES)
            ),
            "score": pa.array(plan.score if plan.score is not None else scores.benefit_mean,
                              type=pa.float64(), from_pandas=True),
            "frac_pos": pa.array(scores.benefit_frac_pos, type=pa.float64(), from_pandas=True),
            "rank": opt_int(rank, pa.int64()),
            "quality_rank": opt_int(plan.quality_rank, pa.int64()),
            "cluster": pa.array(cluster, type=pa.int32(), mask=cluster < 0),
            "cluster_rank": opt_int(plan.cluster_rank, pa.int64()),
            "distance": pa.array(dist, type=pa.float32(), from_pandas=True),
        }
    )


def score_stats(values: np.ndarray) -> dict[str, Any]:
    """Distribution summary of finite scores (count, mean, std, quantiles, share positive)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"count": 0}
    qs = np.quantile(v, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return {
        "count": int(len(v)),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(qs[0]),
        "p05": float(qs[1]),
        "p25": float(qs[2]),
        "median": float(qs[3]),
        "p75": float(qs[4]),
        "p95": float(qs[5]),
        "max": float(qs[6]),
        "frac_positive": float((v > 0).mean()),
    }


def _summary(
    scores: ScoreTable, cfg: SelectionConfig, spec: MethodSpec, budget: int, plan: _Plan, q: QualityResult
) -> dict[str, Any]:
    counts = np.bincount(plan.status, minlength=len(STATUSES))
    return {
        "method": spec.name,
        "kind": spec.method,
        "spec": spec.model_dump(mode="json"),
        "variant": scores.primary_variant,
        "budget": budget,
        "size": int(len(plan.picked)),
        "shortfall": plan.shortfall,
        "status_counts": {s: int(c) for s, c in zip(STATUSES, counts, strict=True)},
        "pool": {
            "n_candidates": int(len(scores.ids)),
            "n_eligible": int(q.eligible.sum()),
            "n_excluded": int((~q.eligible).sum()),
            "excluded_reasons": q.excluded,
            "n_seeds": len(scores.seed_ids),
        },
        "quality": {"rule": cfg.quality_rule, "description": q.rule, "size": int(len(q.order))},
        "clustering": plan.clustering,
        "scores": {
            "selected": score_stats(scores.benefit_mean[plan.picked]),
            "quality_set": score_stats(scores.benefit_mean[q.order]),
            "eligible": score_stats(scores.benefit_mean[q.eligible]),
        },
        # Without the lists of budgets and methods: they do not change this selection, and
        # leaving them out keeps the file identical when only another budget is added.
        "config": cfg.model_dump(mode="json", exclude={"budgets", "methods"}),
    }


def _write_jsonl(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for batch in table.to_batches(max_chunksize=_CHUNK_ROWS):
            for row in batch.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def select(
    scores: ScoreTable,
    pool: pa.Table,
    cfg: SelectionConfig,
    method: str | MethodSpec,
    budget: int,
    out_dir: str | Path,
    plots: bool = True,
    labels: dict[str, str] | None = None,
    tgt_lang: str | None = None,
) -> SelectionResult:
    """Select ``budget`` candidates with ``method`` and write every output file into ``out_dir``.

    ``scores`` comes from :func:`gdig_core.scores.read_scores`; ``pool`` is the pair table
    (columns ``id, src_lang, tgt_lang, src, tgt``) holding every scored id. ``method`` is a
    built-in kind or a :class:`~gdig_core.config.MethodSpec`. ``labels`` (id -> noise label)
    enables the clean oracle and adds the clean share and the ROC AUC of the method's score per
    noise kind to ``summary.json``. Raises :class:`SelectionError` for a non-positive budget, an
    unknown method, a missing score variant or ids missing from the pool. Each file is written
    atomically and ``summary.json`` last, after the previous one was removed: a directory with a
    ``summary.json`` holds one complete selection.
    """
    out = Path(out_dir)
    check_budget(budget)
    spec = _spec(method)
    try:
        scores = scores.for_variant(spec.variant)
    except KeyError as err:
        raise SelectionError(str(err.args[0])) from None
    ctx = pair_context(scores, pool, labels, tgt_lang)
    plan, q = plan_selection(scores, cfg, spec, budget, ctx)
    eff = effective_config(cfg, spec)
    (out / "summary.json").unlink(missing_ok=True)  # until the new files are all in place
    if plan.shortfall:
        plan.shortfall["method"] = spec.name
        log.warning("selection %s b%d: %s", spec.name, budget, plan.shortfall["message"])
    selected = _selected_table(scores, pool, plan)
    summary = _summary(scores, eff, spec, budget, plan, q)
    if ctx.labels is not None:
        summary["noise"] = _noise_summary(ctx.labels, plan)
    files = {
        "selected_jsonl": out / "selected.jsonl",
        "selected_parquet": out / "selected.parquet",
        "candidates": out / "candidates.parquet",
    }
    _write_parquet(files["selected_parquet"], selected)
    _write_jsonl(files["selected_jsonl"], selected)
    _write_parquet(files["candidates"], _candidates_table(scores, plan))
    if plots:
        from gdig_core.selection_plots import write_plots  # matplotlib only when plotting

        files.update(write_plots(out, scores, q, plan.picked, summary))
    files["summary"] = out / "summary.json"
    for stale in set(OUTPUT_FILES) - {p.name for p in files.values()}:
        (out / stale).unlink(missing_ok=True)  # e.g. a clusters.png from an earlier run with plots
    summary["files"] = sorted(p.name for p in files.values())
    atomic_write_json(files["summary"], summary)
    ids = selected.column("id").to_pylist()
    return SelectionResult(spec.name, budget, out, ids, plan.shortfall, summary, files)


def _noise_summary(labels: np.ndarray, plan: _Plan) -> dict[str, Any]:
    """Clean share of the selection, its noise by kind, and the ROC AUC of the method's score
    at ranking clean above each noise kind (over every labelled candidate)."""
    from gdig_core.noise_eval import auc_by_kind

    picked = labels[plan.picked]
    known = picked[picked != ""]
    out: dict[str, Any] = {
        "clean_share": float((known == "clean").mean()) if len(known) else None,
        "selected_by_kind": dict(sorted(Counter(str(k) for k in known).items())),
    }
    if plan.score is not None:
        ids = [str(i) for i in range(len(labels))]
        out["auc"] = auc_by_kind(ids, plan.score, {i: str(k) for i, k in zip(ids, labels, strict=True) if k})
    return out


def load_scores(paths: str | Path | Sequence[str | Path]) -> ScoreTable:
    """Score shards from a glob pattern, a directory of ``*.parquet`` or a list of files (sorted)."""
    from gdig_core.scores import read_scores

    if isinstance(paths, (str, Path)):
        p = Path(paths)
        if p.is_dir():
            files = sorted(p.glob("*.parquet"))
        elif any(ch in p.name for ch in "*?["):
            files = sorted(p.parent.glob(p.name))
        else:
            files = [p]
    else:
        files = [Path(x) for x in paths]
    if not files:
        raise SelectionError(f"no score shards found at {paths}")
    return read_scores(files)


def select_from_files(
    scores: str | Path | Sequence[str | Path],
    pool: str | Path,
    cfg: SelectionConfig,
    method: str,
    budget: int,
    out_dir: str | Path,
    plots: bool = True,
) -> SelectionResult:
    """File-in/file-out :func:`select`: score shards (see :func:`load_scores`) and a pool Parquet."""
    return select(load_scores(scores), pq.read_table(pool), cfg, method, budget, out_dir, plots)


def run_selection(
    scores: ScoreTable, pool: pa.Table, cfg: SelectionConfig, root: str | Path, plots: bool = True
) -> list[SelectionResult]:
    """Every configured method for every budget into :func:`selection_dir` (``full`` once)."""
    results = []
    for spec in cfg.methods:
        budgets = [max(cfg.budgets)] if spec.method == "full" else cfg.budgets
        for budget in budgets:
            results.append(
                select(scores, pool, cfg, spec, budget, selection_dir(root, spec.name, budget, spec.method), plots)
            )
    index = [
        {
            "method": r.method,
            "budget": r.budget,
            "size": r.size,
            "dir": str(r.out_dir.relative_to(root)),
            "shortfall": r.shortfall["message"] if r.shortfall else None,
        }
        for r in results
    ]
    atomic_write_text(Path(root) / "index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    return results
