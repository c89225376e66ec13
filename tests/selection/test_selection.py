"""Selection: quality rule, round robin, cluster coverage, determinism, budgets, baselines, files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from selection_fixtures import blobs, pair_table, write_run

from gdig_core.config import SelectionConfig
from gdig_core.selection import (
    PAIR_COLUMNS,
    SelectionError,
    kmeans_clusters,
    plan_selection,
    quality_mask,
    quality_rank,
    round_robin,
    run_selection,
    select,
    selection_dir,
    within_cluster_rank,
)

# Six candidates x four seeds with hand-checked outcomes (c4 is marked bad by scoring).
KNOWN = np.array(
    [
        [1.0, 1.0, 1.0, 1.0],  # c0: all positive, mean 1.0
        [2.0, 2.0, 2.0, 2.0],  # c1: all positive, mean 2.0 (best)
        [3.0, 3.0, 3.0, -1.0],  # c2: 3/4 positive, mean 2.0 (highest mean, but harms one seed)
        [-1.0, -1.0, -1.0, -1.0],  # c3: harms every seed
        [5.0, 5.0, 5.0, 5.0],  # c4: bad row
        [0.5, 1.5, 1.0, 1.0],  # c5: all positive, mean 1.0 (ties c0; id breaks the tie)
    ]
)


@pytest.fixture
def known(tmp_path):
    feats = np.arange(len(KNOWN) * 2, dtype=np.float32).reshape(-1, 2)
    return write_run(tmp_path, KNOWN, feats, bad={4: "empty_target"})


def _ids(scores, idx):
    return [scores.ids[i] for i in idx]


def test_fraction_rule_on_known_matrix(known):
    scores, _ = known
    q = quality_rank(scores, SelectionConfig(quality_rule="fraction", tau=1.0), budget=2)
    assert _ids(scores, q.order) == ["c0001", "c0000", "c0005"]  # c0 before c5: equal mean, id order
    assert q.excluded == {"empty_target": 1}
    assert not q.eligible[4] and q.eligible.sum() == 5
    q75 = quality_rank(scores, SelectionConfig(quality_rule="fraction", tau=0.75), budget=2)
    assert _ids(scores, q75.order) == ["c0001", "c0002", "c0000", "c0005"]  # c2 (3/4) now in; ties by id
    assert quality_mask(scores, SelectionConfig(quality_rule="fraction", tau=0.0), 2).sum() == 5  # tau 0: every eligible row


def test_topk_and_min_mean_rules(known):
    scores, _ = known
    topk = quality_rank(scores, SelectionConfig(quality_rule="topk", top_k=2), budget=1)
    assert _ids(scores, topk.order) == ["c0001", "c0002"]
    tied = quality_rank(scores, SelectionConfig(quality_rule="topk", top_k_per_budget=4.0), budget=1)  # 4 x budget
    assert len(tied.order) == 4
    # One ratio serves every budget: 2 x budget, as the tuned "gdig" method (evidence configs).
    two = quality_rank(scores, SelectionConfig(quality_rule="topk", top_k_per_budget=2.0), budget=1)
    assert _ids(scores, two.order) == ["c0001", "c0002"]
    assert len(quality_rank(scores, SelectionConfig(quality_rule="topk", top_k_per_budget=1.5), budget=2).order) == 3
    mm = quality_rank(scores, SelectionConfig(quality_rule="min_mean", min_mean=1.5), budget=1)
    assert _ids(scores, mm.order) == ["c0001", "c0002"]  # the bad c4 (mean 5) stays out


def test_quality_method_top_b(known, tmp_path):
    scores, pool = known
    res = select(scores, pool, SelectionConfig(quality_rule="fraction"), "quality", 2, tmp_path / "q", plots=False)
    assert res.ids == ["c0001", "c0000"] and res.shortfall is None


def test_round_robin_order():
    labels = np.array([0, 0, 0, 1, 1, 2])
    ranked = np.array([3, 0, 1, 5, 4, 2])  # cluster visit order: 1 (best is 3), 0, 2
    assert round_robin(labels, ranked, 6).tolist() == [3, 0, 5, 4, 1, 2]
    assert round_robin(labels, ranked, 4).tolist() == [3, 0, 5, 4]
    assert round_robin(labels, ranked, 100).tolist() == [3, 0, 5, 4, 1, 2]
    assert within_cluster_rank(labels, ranked).tolist() == [0, 1, 2, 0, 1, 0]


def test_kmeans_caps_k_and_drops_empty_clusters():
    x = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # 3 distinct points, 6 rows
    cl = kmeans_clusters(x, 10, seed=0)
    assert cl.k_requested == 10 and cl.k_used == 3
    assert sorted(np.bincount(cl.labels).tolist()) == [2, 2, 2]
    assert np.allclose(cl.distances, 0.0, atol=1e-5)


@pytest.mark.parametrize("budget", [5, 12, 40])
def test_every_cluster_represented(tmp_path, budget):
    feats, truth = blobs(n_per=20, centres=5, d=8)
    rng = np.random.default_rng(1)
    benefit = rng.random((len(truth), 6)) + 0.01  # everyone benefits every seed: Q is the pool
    # Make blob 0 the best by far, so a quality-only ranking would take only blob 0.
    benefit[truth == 0] += 10
    scores, pool = write_run(tmp_path, benefit, feats)
    cfg = SelectionConfig(quality_rule="fraction", n_clusters=5)
    res = select(scores, pool, cfg, "gdig", budget, tmp_path / "gdig", plots=False)
    got = pq.read_table(tmp_path / "gdig" / "selected.parquet").to_pylist()
    idx = [int(r["id"][1:]) for r in got]
    assert len(idx) == budget
    assert set(truth[idx]) == set(range(5))  # every true cluster is represented
    per = np.bincount(truth[idx], minlength=5)
    assert per.max() - per.min() <= 1  # balanced: round robin over equal-sized clusters
    # k-means recovered the blobs exactly: one cluster label per true blob.
    cl = {(r["cluster"], truth[int(r["id"][1:])]) for r in got}
    assert len(cl) == 5 and len({c for c, _ in cl}) == 5
    assert res.summary["clustering"]["clusters_represented"] == 5
    only_quality = select(scores, pool, cfg, "quality", budget, tmp_path / "q", plots=False)
    assert set(truth[[int(i[1:]) for i in only_quality.ids]]) == {0} or budget > 20


def test_default_k_tied_to_budget(tmp_path):
    feats, _ = blobs(n_per=30, centres=4, d=4)
    scores, pool = write_run(tmp_path, np.ones((len(feats), 3)), feats)
    plan, _ = plan_selection(scores, SelectionConfig(quality_rule="fraction", cluster_size_hint=10), "gdig", 50)
    assert plan.clustering["k_requested"] == 5  # 50 // 10
    plan, _ = plan_selection(scores, SelectionConfig(quality_rule="fraction", cluster_size_hint=10), "gdig", 5)
    assert plan.clustering["k_requested"] == 2  # at least 2


def test_determinism_byte_for_byte(tmp_path):
    feats, _ = blobs(n_per=25, centres=4, d=6)
    rng = np.random.default_rng(3)
    benefit = rng.standard_normal((len(feats), 5)) + 1.0
    scores, pool = write_run(tmp_path / "run", benefit, feats, bad={3: "nan_loss"})
    cfg = SelectionConfig(quality_rule="fraction", tau=0.8, seed=7)
    for method in ("gdig", "diversity", "random", "quality"):
        plots = method == "gdig"  # plots are slow-ish; one method covers their determinism
        a = select(scores, pool, cfg, method, 15, tmp_path / "a" / method, plots=plots)
        b = select(scores, pool, cfg, method, 15, tmp_path / "b" / method, plots=plots)
        assert a.ids == b.ids
        names = sorted(p.name for p in (tmp_path / "a" / method).iterdir())
        assert "selected.jsonl" in names and ("clusters.png" in names) == plots
        assert names == sorted(p.name for p in (tmp_path / "b" / method).iterdir())
        for name in names:
            assert (tmp_path / "a" / method / name).read_bytes() == (
                tmp_path / "b" / method / name
            ).read_bytes(), name
    # Shard order does not matter: ties are broken by id, not by row position.
    rev = SelectionConfig(quality_rule="fraction", tau=0.8, seed=7)
    from gdig_core.influence.scores import read_scores

    shards = sorted((tmp_path / "run" / "scores").glob("*.parquet"))
    swapped = read_scores(shards[::-1])
    for method in ("gdig", "diversity", "random", "quality"):
        c = select(swapped, pool, rev, method, 15, tmp_path / "c" / method, plots=False)
        assert c.ids == select(scores, pool, rev, method, 15, tmp_path / "d" / method, plots=False).ids


def test_budget_zero_and_negative_rejected(known, tmp_path):
    scores, pool = known
    for bad in (0, -3, True, 2.5):
        with pytest.raises(SelectionError, match="positive integer"):
            select(scores, pool, SelectionConfig(quality_rule="fraction"), "gdig", bad, tmp_path / "x")
    with pytest.raises(ValidationError):
        SelectionConfig(quality_rule="fraction", budgets=[0])
    with pytest.raises(SelectionError, match="unknown selection method"):
        select(scores, pool, SelectionConfig(quality_rule="fraction"), "best", 2, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_budget_larger_than_pool(known, tmp_path):
    scores, pool = known
    for method in ("random", "diversity", "full"):
        res = select(scores, pool, SelectionConfig(quality_rule="fraction"), method, 100, tmp_path / method, plots=False)
        assert sorted(res.ids) == ["c0000", "c0001", "c0002", "c0003", "c0005"]  # all 5 eligible, not c4
        if method != "full":
            assert res.shortfall["available"] == 5 and "exceeds" in res.shortfall["message"]
            summary = json.loads((tmp_path / method / "summary.json").read_text())
            assert summary["shortfall"]["requested"] == 100


def test_shortfall_take_all(known, tmp_path, caplog):
    scores, pool = known
    cfg = SelectionConfig(quality_rule="fraction", shortfall="take_all")
    for method in ("gdig", "quality"):
        res = select(scores, pool, cfg, method, 5, tmp_path / method, plots=False)
        assert sorted(res.ids) == ["c0000", "c0001", "c0005"]  # the whole quality set, nothing else
        assert res.shortfall["policy"] == "take_all" and res.shortfall["available"] == 3
        assert "2 short" in res.shortfall["message"]
    assert "exceeds the quality set" in caplog.text


def test_shortfall_top_up(known, tmp_path):
    scores, pool = known
    cfg = SelectionConfig(quality_rule="fraction", shortfall="top_up")
    res = select(scores, pool, cfg, "gdig", 5, tmp_path / "g", plots=False)
    assert res.ids[3:] == ["c0002", "c0003"]  # next best by mean benefit outside Q (c4 is bad)
    rows = pq.read_table(tmp_path / "g" / "selected.parquet").to_pylist()
    assert all(r["reason"].startswith("top-up") for r in rows[3:])
    assert all(r["reason"].startswith("gdig") for r in rows[:3])
    assert rows[3]["cluster"] is None  # top-ups were not clustered
    assert res.shortfall["topped_up"] == 2
    status = pq.read_table(tmp_path / "g" / "candidates.parquet").column("status").to_pylist()
    assert status == ["selected", "selected", "top_up", "top_up", "bad", "selected"]
    # More than the eligible pool: take what exists, and say so.
    big = select(scores, pool, cfg, "quality", 50, tmp_path / "q", plots=False)
    assert big.size == 5 and "only 5 eligible" in big.shortfall["message"]


def test_k_larger_than_candidates(known, tmp_path):
    scores, pool = known
    res = select(scores, pool, SelectionConfig(quality_rule="fraction", n_clusters=50), "gdig", 3, tmp_path / "g", plots=False)
    clu = res.summary["clustering"]
    assert clu["k_requested"] == 50 and clu["k_used"] <= 3
    assert sorted(res.ids) == ["c0000", "c0001", "c0005"]


def test_no_quality_candidates(tmp_path):
    feats, _ = blobs(n_per=5, centres=2, d=3)
    scores, pool = write_run(tmp_path, -np.ones((10, 3)), feats)  # harms every seed
    res = select(scores, pool, SelectionConfig(quality_rule="fraction", shortfall="take_all"), "gdig", 4, tmp_path / "g", plots=False)
    assert res.size == 0 and res.shortfall["available"] == 0
    res = select(scores, pool, SelectionConfig(quality_rule="fraction", shortfall="top_up"), "gdig", 4, tmp_path / "h", plots=False)
    assert res.size == 4


def test_diversity_ranks_by_centroid_distance(tmp_path):
    feats, truth = blobs(n_per=10, centres=2, d=2, seed=4)
    scores, pool = write_run(tmp_path, np.ones((len(truth), 2)), feats)
    res = select(scores, pool, SelectionConfig(quality_rule="fraction", n_clusters=2), "diversity", 4, tmp_path / "d", plots=False)
    cand = pq.read_table(tmp_path / "d" / "candidates.parquet").to_pylist()
    chosen = {r["id"]: r for r in cand if r["status"] == "selected"}
    assert set(chosen) == set(res.ids)
    for c in (0, 1):
        in_c = [r for r in cand if r["cluster"] == c]
        closest = sorted(in_c, key=lambda r: (r["distance"], r["id"]))[:2]
        assert {r["id"] for r in closest} <= set(chosen)


def test_random_baseline(known, tmp_path):
    scores, pool = known
    a = select(scores, pool, SelectionConfig(quality_rule="fraction", seed=1), "random", 3, tmp_path / "a", plots=False)
    b = select(scores, pool, SelectionConfig(quality_rule="fraction", seed=1), "random", 3, tmp_path / "b", plots=False)
    assert a.ids == b.ids and len(set(a.ids)) == 3 and "c0004" not in a.ids
    draws = {
        tuple(select(scores, pool, SelectionConfig(quality_rule="fraction", seed=s), "random", 3, tmp_path / f"r{s}", plots=False).ids)
        for s in range(6)
    }
    assert len(draws) > 1


def test_output_files_and_schema(known, tmp_path):
    scores, pool = known
    res = select(scores, pool, SelectionConfig(quality_rule="fraction"), "gdig", 2, tmp_path / "g")
    out = tmp_path / "g"
    table = pq.read_table(out / "selected.parquet")
    assert table.column_names == [*PAIR_COLUMNS, "score", "rank", "cluster", "reason"]
    lines = [json.loads(x) for x in (out / "selected.jsonl").read_text().splitlines()]
    assert lines == table.to_pylist()
    assert [r["rank"] for r in lines] == [1, 2] and lines[0]["src"] == "pool Quelle c0001"
    assert lines[0]["score"] == pytest.approx(2.0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["size"] == 2 and summary["pool"]["n_excluded"] == 1
    assert summary["quality"]["size"] == 3 and summary["scores"]["selected"]["count"] == 2
    assert summary["files"] == sorted(
        [
            "candidates.parquet",
            "clusters.png",
            "score_hist.png",
            "selected.jsonl",
            "selected.parquet",
            "summary.json",
        ]
    )
    assert (out / "clusters.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert res.files["summary"] == out / "summary.json"


def test_pool_must_hold_selected_ids(known, tmp_path):
    scores, _ = known
    with pytest.raises(SelectionError, match="not in the pool"):
        select(scores, pair_table(["c0000"], "p"), SelectionConfig(quality_rule="fraction"), "quality", 2, tmp_path / "x")


def test_run_selection_layout(known, tmp_path):
    scores, pool = known
    cfg = SelectionConfig(quality_rule="fraction", budgets=[1, 2])
    results = run_selection(scores, pool, cfg, tmp_path / "sel", plots=False)
    assert len(results) == 9  # 4 methods x 2 budgets + full once
    assert selection_dir(tmp_path / "sel", "full", 2) == tmp_path / "sel" / "full" / "all"
    for r in results:
        assert (r.out_dir / "selected.parquet").exists()
    index = json.loads((tmp_path / "sel" / "index.json").read_text())
    assert {(e["method"], e["dir"]) for e in index} >= {("gdig", "gdig/b1"), ("full", "full/all")}


def test_select_from_shards_and_rewrite(known, tmp_path):
    from gdig_core.data.pairs import read_pairs
    from gdig_core.influence.scores import read_scores

    out = tmp_path / "sel"
    pool = read_pairs(tmp_path / "data" / "pool.parquet")
    a = select(read_scores(sorted((tmp_path / "scores").glob("*.parquet"))), pool,
               SelectionConfig(quality_rule="fraction"), "gdig", 2, out)
    assert (out / "clusters.png").exists()
    b = select(read_scores(sorted((tmp_path / "scores").glob("*.parquet"))), pool,
               SelectionConfig(quality_rule="fraction"), "gdig", 2, out, plots=False)
    assert a.ids == b.ids == ["c0001", "c0005"]  # c0 shares c1's cluster; c5 is alone
    assert not (out / "clusters.png").exists()  # a rewrite leaves no stale file behind
    assert sorted(p.name for p in out.iterdir()) == json.loads((out / "summary.json").read_text())["files"]


def test_outputs_independent_of_other_budgets(known, tmp_path):
    scores, pool = known
    a = select(scores, pool, SelectionConfig(quality_rule="fraction", budgets=[2]), "gdig", 2, tmp_path / "a", plots=False)
    b = select(
        scores,
        pool,
        SelectionConfig(quality_rule="fraction", budgets=[2, 50], methods=["gdig"]),
        "gdig",
        2,
        tmp_path / "b",
        plots=False,
    )
    assert a.ids == b.ids
    for name in ("summary.json", "selected.jsonl", "selected.parquet", "candidates.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
