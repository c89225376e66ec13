"""The report: its tables and plot, the spread over seeds, the verdict against baselines, AUC of every score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gdig_core.influence.scores import ScoreBatch, ScoreShardWriter, read_scores
from gdig_core.report.evidence import all_scores, auc_rows, model_scores, plot_histograms
from gdig_core.report.writer import build_report, comparison_rows, verdict


def _ev(method: str, kind: str, seed: int, bleu: float, nll: float) -> dict:
    return {"method": method, "kind": kind, "budget": 200, "size": 200, "seed": seed,
            "metrics": {"flores": {"bleu": bleu, "chrf": bleu * 2, "ref_nll": nll}}}


EVALS = [_ev("gdig", "gdig", 0, 20.0, 1.2), _ev("gdig", "gdig", 1, 22.0, 1.0), _ev("random", "random", 0, 19.0, 1.4),
         _ev("random", "random", 1, 19.5, 1.3), _ev("cheap", "cheap", 0, 21.5, 1.1), _ev("nll", "nll", 0, 18.0, 1.5),
         _ev("oracle", "oracle", 0, 22.5, 0.9)]
SELS = [{"method": m, "kind": k, "budget": 200, "size": 200,
         "noise": {"clean_share": c, "auc": {"all": a} if a is not None else {}, "selected_by_kind": {"clean": 1}}}
        for m, k, c, a in [("gdig", "gdig", 0.95, 0.9), ("random", "random", 0.7, None), ("cheap", "cheap", 0.9, 0.85),
                           ("nll", "nll", 0.8, 0.6), ("oracle", "oracle", 1.0, 1.0)]]


def test_rows_carry_mean_and_sample_sd_over_seeds() -> None:
    rows = {r["method"]: r for r in comparison_rows(EVALS, SELS)}
    assert rows["gdig"]["flores/bleu"] == pytest.approx(21.0)
    assert rows["gdig"]["flores/bleu_sd"] == pytest.approx(np.std([20.0, 22.0], ddof=1))
    assert "flores/bleu_sd" not in rows["cheap"]  # one seed: no spread claimed
    assert rows["gdig"]["clean_share"] == 0.95 and rows["gdig"]["score_auc"] == 0.9
    assert [r["method"] for r in comparison_rows(EVALS, SELS)] == ["gdig", "random", "nll", "cheap", "oracle"]


def test_verdict_compares_with_random_best_filter_and_oracle() -> None:
    rows = comparison_rows(EVALS, SELS)
    (line,) = verdict(rows, "flores/bleu")
    assert "+1.75 vs random (better)" in line
    assert "-0.50 vs the best cheap filter (cheap) (worse)" in line
    assert "-1.50 vs the clean oracle (worse)" in line
    (nll_line,) = verdict(rows, "flores/ref_nll")  # lower is better for NLL
    assert "-0.25 vs random (better)" in nll_line


def test_report_has_every_section(tmp_path) -> None:
    aucs = [{"score": "base: ekfac-raw mean benefit", "misaligned": 0.9, "all": 0.91}]
    out = build_report(EVALS, SELS, tmp_path, score_aucs=aucs, stage_times=[{"stage": "scoring/base", "seconds": 12.0}],
                       config_yaml="name: x\n", command="gdig run x.yaml")
    md = out["markdown"]
    for part in ("## Comparison", "### Verdict on flores BLEU", "## Scores against labelled noise",
                 "## Each method's ranking score against each noise kind", "| cheap | cheap | - | 0.850 | 0.900 |",
                 "base: ekfac-raw mean benefit", "## Every finetuned model", "## Time per stage", "gdig run x.yaml",
                 "```yaml\nname: x\n"):
        assert part in md, part


def test_auc_rows_and_histograms_from_a_score_shard(tmp_path) -> None:
    ids = [f"p{i}" for i in range(6)]
    labels = {"p0": "clean", "p1": "clean", "p2": "clean", "p3": "misaligned", "p4": "misaligned", "p5": "source_copy"}
    benefit = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, -1.0], [0.5, 0.5], [-1.0, -2.0], [4.0, 4.0]])
    batch = ScoreBatch(ids=ids[::-1], ok=np.ones(6, bool), bad_reason=[None] * 6, loss=np.arange(6.0)[::-1],
                       n_tokens=np.full(6, 5), benefit=benefit[::-1].astype(np.float32),
                       features=np.zeros((6, 2), np.float32), grad_norm=np.ones(6),
                       variant_benefit={"ekfac-raw": benefit[::-1]})
    with ScoreShardWriter(tmp_path / "s.parquet", ["s0", "s1"], 2, variants=["ekfac-raw"]) as w:
        w.write(batch)
    table = read_scores(tmp_path / "s.parquet")
    named = model_scores(ids, table, "base")  # aligned to ids although the shard is reversed
    np.testing.assert_allclose(named["base: ekfac-raw mean benefit"], benefit.mean(1))
    rows = {r["score"]: r for r in auc_rows(ids, named, labels)}
    # mean benefit: clean (2, 2, 0) vs misaligned (0.5, -1.5): 5 of 6 pairs ordered -> 5/6
    assert rows["base: ekfac-raw mean benefit"]["misaligned"] == pytest.approx(5 / 6)
    assert rows["base: ekfac-raw mean benefit"]["source_copy"] == 0.0
    assert plot_histograms(ids, named, labels, str(tmp_path / "h.png"))
    pool = pa.table({"id": ids, "src": ["Das ist gut."] * 6, "tgt": ["That is good."] * 5 + ["Das ist gut."]})
    _, with_text = all_scores(pool, {"base": table}, "en")
    assert with_text["not a copy"][5] < with_text["not a copy"][0]


def test_report_tables_and_plot(tmp_path: Path) -> None:
    evals = [
        {"method": "zero-shot", "budget": 0, "size": 0, "seed": None,
         "metrics": {"flores": {"bleu": 1.0, "chrf": 20.0}, "wmt22": {"bleu": 0.5, "chrf": 18.0}}},
        {"method": "gdig", "budget": 100, "size": 100, "seed": 0,
         "metrics": {"flores": {"bleu": 7.0, "chrf": 31.0}, "wmt22": {"bleu": 6.0, "chrf": 30.0}}},
        {"method": "gdig", "budget": 100, "size": 100, "seed": 1,
         "metrics": {"flores": {"bleu": 9.0, "chrf": 33.0}, "wmt22": {"bleu": 8.0, "chrf": 32.0}}},
        {"method": "random", "budget": 100, "size": 100, "seed": 0,
         "metrics": {"flores": {"bleu": 5.0, "chrf": 29.0}, "wmt22": {"bleu": 4.0, "chrf": 27.0}}},
    ]
    sels = [{"method": "gdig", "budget": 100, "size": 100, "clean_share": 0.9},
            {"method": "random", "budget": 100, "size": 100, "clean_share": 0.7}]
    result = build_report(evals, sels, tmp_path)
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["gdig"]["flores/bleu"] == pytest.approx(8.0) and rows["gdig"]["seeds"] == 2
    assert rows["random"]["clean_share"] == 0.7 and rows["zero-shot"]["wmt22/chrf"] == 18.0
    assert [r["method"] for r in result["rows"]] == ["zero-shot", "gdig", "random"]
    md = (tmp_path / "report.md").read_text()
    assert "| method | kind | model | budget |" in md and "flores/bleu" in md
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert json.loads((tmp_path / "comparison.json").read_text())[1]["method"] == "gdig"
