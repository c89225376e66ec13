"""OpusFilter's standard chain (gdig_core.filters.opusfilter) on known inputs, as a selection method
and pre-filter, and its language-id filter against gdig_core.filters.rules' own on real pool data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from paths import DATA_DIR

from gdig_core.filters.opusfilter import FILTERS, opusfilter_scores, rejections

CLEAN = ("Das Haus ist klein und alt.", "The house is small and old.")
KNOWN = [
    CLEAN,
    ("Das Haus ist klein und alt.", " ".join(["word"] * 120) + "."),                   # length
    ("Ja.", "Yes, I would very much like to come along with you to the big city tomorrow."),  # ratio
    ("Das Haus ist klein und alt.", "Дом маленький и старый."),                           # script
    ("Wirklich?!?! Wann?!?! Wo?!?!", "Really. When. Where"),                            # punctuation
    ("Er kam 1998 mit 3 Koffern.", "He came in 2004 with four suitcases."),             # numerals
    ("Das Haus ist klein und alt.", "Das Haus ist klein und alt."),                   # language id
]
EXPECTED_REJECT = [None, "length", "length_ratio", "script", "terminal_punctuation", "numerals", "language_id"]


def test_each_filter_rejects_its_own_case() -> None:
    src, tgt = zip(*KNOWN, strict=True)
    scores = opusfilter_scores(list(src), list(tgt), "de", "en")
    for i, want in enumerate(EXPECTED_REJECT):
        failed = [f for f in FILTERS if not scores[f"accept:{f}"][i]]
        assert (want is None and not failed) or want in failed, (i, KNOWN[i], failed)
    assert scores["accepted"].tolist() == [True] + [False] * 6
    assert scores["passed"][0] == len(FILTERS) and (scores["passed"][1:] < len(FILTERS)).all()
    assert scores["score"][0] == scores["score"].max()  # passing everything ranks first
    assert sum(rejections(scores).values()) >= 6


def test_chinese_lengths_are_counted_in_characters() -> None:
    scores = opusfilter_scores(["这座房子又小又旧。"], ["The house is small and old."], "zh", "en")
    assert scores["accepted"].tolist() == [True]


def test_method_and_prefilter(tmp_path) -> None:
    from gdig_core.config import MethodSpec, SelectionConfig
    from gdig_core.selection import select
    from gdig_core.selection.context import PairContext, prefilter_keep

    ids = [f"c{i}" for i in range(len(KNOWN))]
    pool = pa.table({"id": ids, "src_lang": ["de"] * len(ids), "tgt_lang": ["en"] * len(ids),
                     "src": [s for s, _ in KNOWN], "tgt": [t for _, t in KNOWN]})
    from selection_fixtures import write_run

    rng = np.random.default_rng(0)
    scores, _ = write_run(tmp_path / "run", rng.normal(size=(len(ids), 4)), rng.normal(size=(len(ids), 3)))
    scores.ids = np.array(ids, dtype=object)
    result = select(scores, pool, SelectionConfig(), "opusfilter", 2, tmp_path / "o", plots=False)
    assert result.ids == ["c0"] + result.ids[1:] and result.ids[1] in ids[1:]  # the one that passes all first
    ctx = PairContext(src=[s for s, _ in KNOWN], tgt=[t for _, t in KNOWN], src_lang="de", tgt_lang="en")
    keep, counts, why, stage = prefilter_keep(np.ones(len(ids), dtype=bool), MethodSpec(name="x", method="random",
                                       prefilter=["opusfilter"]), ctx, 0.5)
    assert keep.tolist() == [True] + [False] * 6 and counts == {"prefilter_opusfilter": 6}
    assert why[1] == "rejected by the opusfilter pre-filter" and stage.tolist() == [0] + [1] * 6


@pytest.mark.slow
def test_language_id_agrees_with_the_hand_written_filter() -> None:
    """Both use langid.py's model (py3langid): where ours finds the target at least 50% English,
    OpusFilter's LangidFilter identifies it as English too, on 2,000 real pool pairs (one way:
    OpusFilter takes the top language over all 97, ours the probability among 14)."""
    from gdig_core.filters.rules import language_id_score, rejected

    rows = [json.loads(line) for line in (DATA_DIR / "de-en" / "pool.wmt17-20.jsonl").open(encoding="utf-8")][:2000]
    src, tgt = [r["src"] for r in rows], [r["tgt"] for r in rows]
    ours_keep = ~rejected("language_id", language_id_score(tgt, "en"))
    theirs = opusfilter_scores(src, tgt, "de", "en")["accept:language_id"]
    # OpusFilter also checks the source side: compare where its source check passes.
    from gdig_core.filters.opusfilter import build_chain

    lid = dict(build_chain("de", "en"))["language_id"]
    src_ok = np.array([lid.confidence(s, "de") > 0 for s in src])
    agree = (ours_keep == theirs)[src_ok]
    assert agree.mean() >= 0.98, agree.mean()
    assert (theirs[src_ok][ours_keep[src_ok]]).mean() >= 0.99
