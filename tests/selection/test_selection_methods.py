"""Selection methods beyond the paper's: method specs, cheap filters, NLL, the clean oracle,
pre-filters, score variants, and the noise summary every selection records."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from gdig_core.config import MethodSpec, SelectionConfig
from gdig_core.influence.scores import ScoreBatch, ScoreShardWriter, read_scores
from gdig_core.selection import SelectionError, select

# Six hand-made de-en pairs: two clean, a copy, a truncated target, a German target, a clean one.
PAIRS = [
    ("c0", "Das Haus ist klein und alt.", "The house is small and old."),
    ("c1", "Wir fahren morgen nach Berlin.", "We are going to Berlin tomorrow."),
    ("c2", "Der Zug hat heute Verspätung.", "Der Zug hat heute Verspätung."),
    ("c3", "Die Regierung hat am Montag einen neuen Plan vorgestellt.", "The government"),
    ("c4", "Ich trinke gern Kaffee am Morgen.", "Er hat das Buch schon gelesen, sagt sie."),
    ("c5", "Das Wetter ist heute sehr schön.", "The weather is very nice today."),
]
LABELS = {"c0": "clean", "c1": "clean", "c2": "source_copy", "c3": "truncated", "c4": "wrong_language",
          "c5": "clean"}
# Primary-variant benefit (4 seeds): c2 looks best to the influence score, c4 worst.
BENEFIT = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0],
                    [0.5, 0.5, -1.0, 0.5], [-1.0, -1.0, -1.0, -1.0], [1.5, 1.5, 1.5, 1.5]])
# A second variant that ranks c5 first and c2 last.
OTHER = np.array([[1.0] * 4, [2.0] * 4, [-3.0] * 4, [0.1] * 4, [-1.0] * 4, [4.0] * 4])
LOSS = np.array([2.0, 1.5, 0.2, 3.0, 4.0, 1.0])  # the copy has the lowest NLL, as real models do


@pytest.fixture()
def setting(tmp_path):
    ids = [p[0] for p in PAIRS]
    pool = pa.table({"id": ids, "src_lang": ["de"] * 6, "tgt_lang": ["en"] * 6,
                     "src": [p[1] for p in PAIRS], "tgt": [p[2] for p in PAIRS]})
    batch = ScoreBatch(ids=ids, ok=np.ones(6, bool), bad_reason=[None] * 6, loss=LOSS, n_tokens=np.full(6, 8),
                       benefit=BENEFIT.astype(np.float32), features=np.eye(6, 3, dtype=np.float32),
                       grad_norm=np.ones(6), variant_benefit={"ekfac-raw": BENEFIT, "identity-cosine": OTHER})
    path = tmp_path / "s.parquet"
    with ScoreShardWriter(path, [f"s{j}" for j in range(4)], 3, variants=["ekfac-raw", "identity-cosine"]) as w:
        w.write(batch)
    return read_scores(path), pool


def _ids(res) -> list[str]:
    return list(res.ids)


def test_specs_from_strings_and_dicts_and_bad_names() -> None:
    cfg = SelectionConfig(quality_rule="fraction", methods=["gdig", {"name": "gdig-paper", "method": "gdig", "tau": 1.0, "model": "reference"}])
    assert [m.name for m in cfg.methods] == ["gdig", "gdig-paper"] and cfg.methods[1].tau == 1.0
    with pytest.raises(ValidationError, match="unique"):
        SelectionConfig(quality_rule="fraction", methods=["gdig", {"name": "gdig", "method": "quality"}])
    with pytest.raises(ValidationError):
        SelectionConfig(quality_rule="fraction", methods=[{"name": "../escape", "method": "gdig"}])
    with pytest.raises(ValidationError, match="variant"):
        MethodSpec(name="x", method="gdig", variant="ekfac-l1")
    with pytest.raises(ValidationError, match="empty"):
        SelectionConfig(quality_rule="fraction", methods=[])


def test_nll_filter_keeps_the_lowest_nll(setting, tmp_path) -> None:
    scores, pool = setting
    res = select(scores, pool, SelectionConfig(quality_rule="fraction"), "nll", 2, tmp_path / "n", plots=False, labels=LABELS)
    assert _ids(res) == ["c2", "c5"]  # the copy first: why NLL alone is a poor filter
    assert res.summary["noise"]["clean_share"] == 0.5
    assert res.summary["noise"]["auc"]["source_copy"] == 0.0


def test_cheap_filters_reject_copies_and_wrong_language(setting, tmp_path) -> None:
    scores, pool = setting
    res = select(scores, pool, SelectionConfig(quality_rule="fraction"), "cheap", 3, tmp_path / "c", plots=False, labels=LABELS)
    assert set(_ids(res)) == {"c0", "c1", "c5"} and res.summary["noise"]["clean_share"] == 1.0
    copy = select(scores, pool, SelectionConfig(quality_rule="fraction"), "copy", 5, tmp_path / "k", plots=False)
    assert "c2" not in _ids(copy)
    ratio = select(scores, pool, SelectionConfig(quality_rule="fraction"), "length_ratio", 5, tmp_path / "l", plots=False)
    assert "c3" not in _ids(ratio)  # the truncated target has the worst length ratio


def test_oracle_takes_only_clean_pairs_and_needs_labels(setting, tmp_path) -> None:
    scores, pool = setting
    res = select(scores, pool, SelectionConfig(quality_rule="fraction"), "oracle", 3, tmp_path / "o", plots=False, labels=LABELS)
    assert sorted(_ids(res)) == ["c0", "c1", "c5"] and res.summary["noise"]["auc"]["all"] == 1.0
    short = select(scores, pool, SelectionConfig(quality_rule="fraction"), "oracle", 5, tmp_path / "o5", plots=False, labels=LABELS)
    assert short.size == 3 and short.shortfall is not None
    with pytest.raises(SelectionError, match="noise labels"):
        select(scores, pool, SelectionConfig(quality_rule="fraction"), "oracle", 2, tmp_path / "x", plots=False)


def test_prefilter_and_variant_change_what_quality_selects(setting, tmp_path) -> None:
    scores, pool = setting
    cfg = SelectionConfig(quality_rule="topk", top_k=6)
    plain = select(scores, pool, cfg, "quality", 2, tmp_path / "p", plots=False)
    assert _ids(plain) == ["c2", "c1"]
    spec = MethodSpec(name="q-filtered", method="quality", prefilter=["copy", "language_id"])
    filtered = select(scores, pool, cfg, spec, 2, tmp_path / "f", plots=False, labels=LABELS)
    assert _ids(filtered) == ["c1", "c5"]
    assert filtered.summary["pool"]["excluded_reasons"] == {"prefilter_copy": 1, "prefilter_language_id": 1}
    other = select(scores, pool, cfg, MethodSpec(name="q-cos", method="quality", variant="identity-cosine"), 2,
                   tmp_path / "v", plots=False)
    assert _ids(other) == ["c5", "c1"] and other.summary["variant"] == "identity-cosine"
    with pytest.raises(SelectionError, match="not scored"):
        select(scores, pool, cfg, MethodSpec(name="q", method="quality", variant="kfac-raw"), 2, tmp_path / "y")


def test_spec_overrides_apply_to_one_method_only(setting, tmp_path) -> None:
    scores, pool = setting
    cfg = SelectionConfig(quality_rule="fraction", tau=0.5, shortfall="take_all")
    strict = select(scores, pool, cfg, MethodSpec(name="strict", method="quality", tau=1.0), 6, tmp_path / "s",
                    plots=False)
    loose = select(scores, pool, cfg, "quality", 6, tmp_path / "l", plots=False)
    assert strict.size == 4 and loose.size == 5  # tau 1.0 drops c3 (harms a seed) and c4
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["method"] == "strict" and summary["kind"] == "quality" and summary["config"]["tau"] == 1.0


def test_every_method_writes_a_reason_for_every_candidate(setting, tmp_path) -> None:
    """Explanations are written, not rebuilt: each method words every row of candidates.parquet."""
    import pyarrow.parquet as pq

    from gdig_core.selection import method_names

    scores, pool = setting
    cfg = SelectionConfig(quality_rule="topk", top_k=3, n_clusters=2)
    for kind in method_names():
        spec = MethodSpec(name=kind, method=kind, prefilter=["copy"] if kind == "quality" else [])
        select(scores, pool, cfg, spec, 2, tmp_path / kind, plots=False, labels=LABELS, tgt_lang="en",
               qe={str(i): -float(k) for k, i in enumerate(scores.ids)})
        rows = pq.read_table(tmp_path / kind / "candidates.parquet").to_pylist()
        assert len(rows) == 6 and all(r["reason"] for r in rows), kind
        assert all(r["reason"] != "not selected" for r in rows), (kind, rows)
        if kind == "quality":  # the copy is dropped by the pre-filter, and says so
            assert next(r for r in rows if r["id"] == "c2")["reason"].endswith("rejected by the copy pre-filter")
