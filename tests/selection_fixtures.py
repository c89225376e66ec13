"""Shared builders for the selection and explain tests: score shards written with the real
writer (gdig_core.influence.scores), pool and seed Parquet files in the run-directory layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gdig_core.influence.scores import ScoreBatch, ScoreTable, read_scores, write_score_shard


def pair_table(ids: list[str], prefix: str) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": ids,
            "src_lang": ["de"] * n,
            "tgt_lang": ["en"] * n,
            "src": [f"{prefix} Quelle {i}" for i in ids],
            "tgt": [f"{prefix} target {i}" for i in ids],
        }
    )


def write_run(
    run_dir: Path,
    benefit: np.ndarray,
    features: np.ndarray,
    bad: dict[int, str] | None = None,
    shards: int = 2,
) -> tuple[ScoreTable, pa.Table]:
    """Write ``scores/shard-*.parquet``, ``data/pool.parquet``, ``data/seed.parquet``; read back."""
    n, m = benefit.shape
    bad = bad or {}
    ids = [f"c{i:04d}" for i in range(n)]
    seed_ids = [f"s{j:02d}" for j in range(m)]
    ok = np.array([i not in bad for i in range(n)])
    bounds = np.linspace(0, n, shards + 1).astype(int)
    paths = []
    for k in range(shards):
        lo, hi = bounds[k], bounds[k + 1]
        batch = ScoreBatch(
            ids=ids[lo:hi],
            ok=ok[lo:hi],
            bad_reason=[bad.get(i) for i in range(lo, hi)],
            loss=np.linspace(0.5, 2.0, hi - lo),
            n_tokens=np.full(hi - lo, 12),
            benefit=benefit[lo:hi].astype(np.float32),
            features=features[lo:hi].astype(np.float32),
        )
        path = run_dir / "scores" / f"shard-{k:05d}.parquet"
        write_score_shard(path, [batch], seed_ids, features.shape[1])
        paths.append(path)
    pool = pair_table(ids, "pool")
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pool, run_dir / "data" / "pool.parquet")
    pq.write_table(pair_table(seed_ids, "seed"), run_dir / "data" / "seed.parquet")
    return read_scores(paths), pool


def blobs(n_per: int, centres: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs: (features [n, d], true blob of each row)."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, d)) * 20
    truth = np.repeat(np.arange(centres), n_per)
    feats = centre[truth] + rng.standard_normal((len(truth), d)) * 0.5
    return feats.astype(np.float32), truth
