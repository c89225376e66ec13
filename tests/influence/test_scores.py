"""Score shard files: round trip, summaries, top-k, bad rows, large-M mode, verification."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from gdig_core.influence.scores import (
    ScoreBatch,
    ScoreShardWriter,
    read_scores,
    read_seed_ids,
    verify_score_shard,
    write_score_shard,
)


def _batch(
    rng: np.random.Generator, start: int, n: int, m: int, d: int, bad: set[int] = frozenset()
) -> ScoreBatch:
    ok = np.array([i not in bad for i in range(n)])
    return ScoreBatch(
        ids=[f"c{start + i}" for i in range(n)],
        ok=ok,
        bad_reason=[None if ok[i] else "nan_loss" for i in range(n)],
        loss=np.where(ok, rng.random(n), np.nan),
        n_tokens=rng.integers(1, 50, n),
        benefit=rng.standard_normal((n, m)).astype(np.float32),
        features=rng.standard_normal((n, d)).astype(np.float32),
    )


def test_round_trip_summaries_and_topk(tmp_path):
    rng = np.random.default_rng(0)
    m, d = 7, 5
    seeds = [f"s{j}" for j in range(m)]
    b1, b2 = _batch(rng, 0, 4, m, d, bad={2}), _batch(rng, 4, 3, m, d)
    path = tmp_path / "shard.parquet"
    assert write_score_shard(path, [b1, b2], seeds, d, top_k_seeds=3) == 7
    t = read_scores([path])
    assert list(t.ids) == [f"c{i}" for i in range(7)]
    assert t.seed_ids == seeds == read_seed_ids(path)
    assert list(t.ok) == [True, True, False, True, True, True, True]
    assert t.bad_reason[2] == "nan_loss" and t.bad_reason[0] is None
    ben = np.concatenate([b1.benefit, b2.benefit]).astype(np.float64)
    good = t.ok
    np.testing.assert_allclose(t.benefit[good], ben[good].astype(np.float32))
    assert np.isnan(t.benefit[2]).all() and np.isnan(t.features[2]).all()
    np.testing.assert_allclose(t.benefit_mean[good], ben[good].mean(1), rtol=1e-6)
    np.testing.assert_allclose(t.benefit_min[good], ben[good].min(1), rtol=1e-6)
    np.testing.assert_allclose(t.benefit_max[good], ben[good].max(1), rtol=1e-6)
    np.testing.assert_allclose(t.benefit_frac_pos[good], (ben[good] > 0).mean(1))
    assert np.isnan(t.benefit_mean[2]) and np.isnan(t.loss[2])
    feats = np.concatenate([b1.features, b2.features])
    np.testing.assert_allclose(t.features[good], feats[good])
    for i in np.flatnonzero(good):
        order = np.argsort(-ben[i])
        assert t.top_helped[i] == [seeds[j] for j in order[:3]]
        assert t.top_harmed[i] == [seeds[j] for j in order[::-1][:3]]
        np.testing.assert_allclose(t.top_helped_values[i], ben[i][order[:3]])
    assert t.top_helped[2] == []
    np.testing.assert_array_equal(t.n_tokens, np.concatenate([b1.n_tokens, b2.n_tokens]))


def test_large_m_stores_only_summaries(tmp_path):
    rng = np.random.default_rng(1)
    m, d = 20, 3
    seeds = [f"s{j}" for j in range(m)]
    path = tmp_path / "big.parquet"
    b = _batch(rng, 0, 5, m, d)
    write_score_shard(path, [b], seeds, d, full_benefit_max_seeds=10, top_k_seeds=2)
    t = read_scores(path)
    assert t.benefit is None
    assert pq.read_table(path).column("benefit").null_count == 5
    np.testing.assert_allclose(t.benefit_mean, b.benefit.astype(np.float64).mean(1), rtol=1e-6)
    assert all(len(h) == 2 for h in t.top_helped)


def test_concat_and_mismatched_seeds(tmp_path):
    rng = np.random.default_rng(2)
    p1, p2, p3 = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    write_score_shard(p1, [_batch(rng, 0, 3, 4, 2)], ["a", "b", "c", "d"], 2)
    write_score_shard(p2, [_batch(rng, 3, 2, 4, 2)], ["a", "b", "c", "d"], 2)
    write_score_shard(p3, [_batch(rng, 5, 2, 4, 2)], ["a", "b", "c", "x"], 2)
    t = read_scores([p1, p2])
    assert len(t) == 5 and t.benefit.shape == (5, 4) and t.features.shape == (5, 2)
    with pytest.raises(ValueError):
        read_scores([p1, p3])


def test_atomic_and_verify(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "s.parquet"
    with pytest.raises(RuntimeError):
        with ScoreShardWriter(path, ["a", "b"], 2) as w:
            w.write(_batch(rng, 0, 2, 2, 2))
            raise RuntimeError("crash mid-shard")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind
    write_score_shard(path, [_batch(rng, 0, 2, 2, 2)], ["a", "b"], 2)
    assert verify_score_shard(path)
    assert verify_score_shard(path, expected_ids=["c1", "c0"])
    assert not verify_score_shard(path, expected_ids=["c0"])
    truncated = tmp_path / "t.parquet"
    truncated.write_bytes(path.read_bytes()[:-20])
    assert not verify_score_shard(truncated)
    assert not verify_score_shard(tmp_path / "missing.parquet")
