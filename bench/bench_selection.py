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
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gdig_core.config import SelectionConfig  # noqa: E402
from gdig_core.scores import ScoreTable  # noqa: E402
from gdig_core.selection import METHODS, select  # noqa: E402


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def synth(n: int, d: int, m: int, blobs: int, quality_frac: float, seed: int) -> tuple[ScoreTable, pa.Table]:
    rng = np.random.default_rng(seed)
    ids = np.array([f"cand-{i:08d}" for i in range(n)], dtype=object)
    centres = rng.standard_normal((blobs, d), dtype=np.float32) * 2.0
    feats = rng.standard_normal((n, d), dtype=np.float32)
    feats += centres[rng.integers(0, blobs, n)]
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
    args = ap.parse_args(argv)

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
            t = time.perf_counter()
            res = select(scores, pool, cfg, method, args.budget, root / method, plots=not args.no_plots)
            dt = time.perf_counter() - t
            clu = res.summary.get("clustering") or {}
            row = {
                "seconds": round(dt, 1),
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
