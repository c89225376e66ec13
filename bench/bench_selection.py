"""Selection at pool scale: time and peak memory of every method on synthetic scores.

Builds a ScoreTable of N candidates (default 1,000,000) with d-dimensional float32 gradient
features (default 256) drawn from a mixture of Gaussian blobs, summary benefit statistics with a
chosen share passing the tau=1 quality rule, and a pool table with short texts; then runs
:func:`gdig_core.selection.select` (outputs and plots included) for each method at budget B and
reports wall time per method and the process's peak resident memory.

    .venv/bin/python bench/bench_selection.py                  # 1M x 256, B=10000, all methods
    .venv/bin/python bench/bench_selection.py --n 100000 --methods gdig diversity

Peak memory is ``ru_maxrss`` (whole process), printed after synthesis and after each method, so
the growth over the input data is visible.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METHODS = ("gdig", "quality", "diversity", "random", "full")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def synth_features(n: int, d: int, blobs: int, rng: np.random.Generator) -> np.ndarray:
    """A mixture of Gaussian blobs (centres at scale 2, unit noise), float32 [n, d]."""
    centres = rng.standard_normal((blobs, d), dtype=np.float32) * 2.0
    feats = rng.standard_normal((n, d), dtype=np.float32)
    feats += centres[rng.integers(0, blobs, n)]
    return feats


def synth(n: int, d: int, m: int, blobs: int, quality_frac: float, seed: int):
    import pyarrow as pa

    from gdig_core.influence.scores import ScoreTable

    rng = np.random.default_rng(seed)
    ids = np.array([f"cand-{i:08d}" for i in range(n)], dtype=object)
    feats = synth_features(n, d, blobs, rng)
    mean = rng.standard_normal(n)
    passes = rng.random(n) < quality_frac
    frac = np.where(passes, 1.0, rng.integers(0, m, n) / m)
    ok = rng.random(n) > 0.001  # a few bad rows, as scoring produces
    nan = np.where(ok, 0.0, np.nan)
    empty: list[list] = [[] for _ in range(n)]
    scores = ScoreTable(
        ids=ids,
        ok=ok,
        bad_reason=np.where(ok, None, "empty_target").astype(object),
        loss=rng.random(n) + nan,
        n_tokens=np.full(n, 40, np.int32),
        benefit_mean=mean + nan,
        benefit_frac_pos=frac + nan,
        benefit_min=mean - 1 + nan,
        benefit_max=mean + 1 + nan,
        benefit=None,
        features=feats,
        seed_ids=[f"seed-{j}" for j in range(m)],
        top_helped=empty,
        top_helped_values=empty,
        top_harmed=empty,
        top_harmed_values=empty,
    )
    id_col = pa.array(ids.tolist(), pa.string())
    src = pa.array([f"Das ist der Quellsatz Nummer {i}." for i in range(n)], pa.string())
    tgt = pa.array([f"This is source sentence number {i}." for i in range(n)], pa.string())
    pool = pa.table(
        {
            "id": id_col,
            "src_lang": pa.array(["de"] * n),
            "tgt_lang": pa.array(["en"] * n),
            "src": src,
            "tgt": tgt,
        }
    )
    return scores, pool


def inertia(x: np.ndarray, centres: np.ndarray, chunk: int = 65_536) -> float:
    """Sum of squared distances to the nearest centre, computed the same way for every library."""
    c2 = (centres.astype(np.float64) ** 2).sum(1)
    total = 0.0
    for s in range(0, len(x), chunk):
        xb = x[s : s + chunk]
        d2 = (xb.astype(np.float64) ** 2).sum(1)[:, None] - 2 * (xb @ centres.T) + c2[None, :]
        total += float(np.maximum(d2.min(1), 0).sum())
    return total


def compare_kmeans(n: int, d: int, k: int, blobs: int, which: list[str], max_iter: int) -> dict:
    """Time k-means implementations on the same synthetic features (fit + final assignment)."""
    x = synth_features(n, d, blobs, np.random.default_rng(0))
    out: dict = {"n": n, "dim": d, "k": k, "runs": {}}
    for name in which:
        t, c = time.perf_counter(), time.process_time()
        if name == "faiss":
            import faiss  # optional: only for this comparison

            km = faiss.Kmeans(d, k, niter=max_iter, seed=0, verbose=False)
            km.train(x)
            km.index.search(x, 1)  # the labels of every point, as selection needs them
            centres = km.centroids
        else:
            from sklearn.cluster import KMeans, MiniBatchKMeans

            km = None
            if name == "sklearn-sampled":  # what selection's kmeans_algorithm=auto does
                from gdig_core.selection import kmeans_clusters

                centres = kmeans_clusters(x, k, seed=0, algorithm="auto", max_iter=max_iter).centers
            elif name == "sklearn-minibatch":
                km = MiniBatchKMeans(
                    n_clusters=k,
                    batch_size=4096,
                    max_iter=max_iter,
                    n_init=1,
                    random_state=0,
                    max_no_improvement=10,
                    reassignment_ratio=0.01,
                ).fit(x)
            else:
                km = KMeans(n_clusters=k, n_init=1, max_iter=max_iter, random_state=0).fit(x)
            if km is not None:
                centres = km.cluster_centers_.astype(np.float32)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        out["runs"][name] = {
            "seconds": round(dt, 1),
            "cpu_seconds": round(cpu, 1),
            "inertia": inertia(x, centres),
            "peak_gib": round(peak_gib(), 2),
        }
        print(f"{name:18s} {json.dumps(out['runs'][name])}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=200, help="M (only summaries are synthesised)")
    ap.add_argument("--blobs", type=int, default=64)
    ap.add_argument("--quality-frac", type=float, default=0.2, help="share passing tau=1")
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--n-clusters", type=int, default=None, help="K (default: budget // 10)")
    ap.add_argument("--algorithm", default="auto", choices=["auto", "lloyd", "minibatch"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="output root (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--kmeans-compare",
        nargs="+",
        default=None,
        choices=["sklearn-sampled", "sklearn-minibatch", "sklearn-lloyd", "faiss"],
        help="only time these k-means implementations on the features (needs numpy, sklearn, faiss)",
    )
    ap.add_argument("--max-iter", type=int, default=20, help="k-means iterations for --kmeans-compare")
    args = ap.parse_args(argv)
    if args.kmeans_compare:
        k = args.n_clusters or max(2, args.budget // 10)
        res = compare_kmeans(args.n, args.dim, k, args.blobs, args.kmeans_compare, args.max_iter)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    from gdig_core.config import SelectionConfig
    from gdig_core.selection import select

    t0 = time.perf_counter()
    scores, pool = synth(args.n, args.dim, args.seeds, args.blobs, args.quality_frac, seed=0)
    results: dict = {
        "n": args.n,
        "dim": args.dim,
        "budget": args.budget,
        "algorithm": args.algorithm,
        "synth_s": round(time.perf_counter() - t0, 1),
        "synth_peak_gib": round(peak_gib(), 2),
        "methods": {},
    }
    print(
        f"synthesised {args.n} x {args.dim} in {results['synth_s']} s, peak RSS {results['synth_peak_gib']} GiB",
        flush=True,
    )
    cfg = SelectionConfig(budgets=[args.budget], n_clusters=args.n_clusters, kmeans_algorithm=args.algorithm)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for method in args.methods:
            t, c = time.perf_counter(), time.process_time()
            res = select(scores, pool, cfg, method, args.budget, root / method, plots=not args.no_plots)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
            clu = res.summary.get("clustering") or {}
            row = {
                "seconds": round(dt, 1),
                "cpu_seconds": round(cpu, 1),
                "kmeans_iters": clu.get("n_iter"),
                "size": res.size,
                "peak_gib": round(peak_gib(), 2),
                "k_used": clu.get("k_used"),
                "kmeans": clu.get("algorithm"),
                "clustered": sum(clu.get("cluster_sizes", [])) or None,
                "clusters_represented": clu.get("clusters_represented"),
            }
            results["methods"][method] = row
            print(f"{method:10s} {json.dumps(row)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
