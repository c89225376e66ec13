"""Clustering and cluster-balanced resampling (design section 3, step 6).

k-means on gradient features (Euclidean) with a bounded cost at pool scale, clusters renumbered
by their best-ranked member, and :func:`round_robin`: the best remaining member of each cluster
in turn. Every function takes and returns plain arrays.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gdig_core.config import SelectionConfig
from gdig_core.selection.quality import CHUNK_ROWS, SelectionError

#: ``kmeans_algorithm=auto`` fits on at most this many points per cluster (faiss's default).
SAMPLE_PER_CLUSTER = 256
#: k-means++ initialisation runs on at most this many points per cluster.
INIT_PER_CLUSTER = 4


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
    for s in range(0, len(x), CHUNK_ROWS):
        diff = x[s : s + CHUNK_ROWS] - centers[labels[s : s + CHUNK_ROWS]]
        out[s : s + CHUNK_ROWS] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
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
