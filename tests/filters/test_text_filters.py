"""Cheap per-pair scores on hand-made pairs, and their AUC table against hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from gdig_core.data.noise_eval import auc_by_kind, rule_auc_table
from gdig_core.filters.rules import (
    REJECTED_OFFSET,
    cheap_scores,
    combined_filter_score,
    copy_score,
    language_id_score,
    length_ratio_score,
    rejected,
)

SRC = "Der Bürgermeister eröffnete am Montag die neue Brücke über den Fluss."
EN = "The mayor opened the new bridge over the river on Monday."


def test_copy_score_flags_copies_and_near_copies() -> None:
    near = "der Bürgermeister eröffnete am Montag die neue Brücke über den Fluss ."
    half = "The mayor opened the new bridge über den Fluss."
    scores = copy_score([SRC] * 4, [SRC, near, half, EN])
    assert scores[0] == 0.0 and scores[1] == 0.0
    assert 0.2 < scores[2] < 0.8
    assert scores[3] > 0.8
    # No letters or digits: nothing to compare, not a copy.
    assert copy_score(["abc"], ["-- !"])[0] == 1.0


def test_language_id_score_is_the_probability_of_the_target_language() -> None:
    en = language_id_score([EN, SRC], "en")
    assert en[0] > 0.9 and en[1] < 0.1
    de = language_id_score([EN, SRC], "de")
    assert de[1] > 0.9 and de[0] < 0.1
    assert language_id_score(["这座新桥周一由市长开通。"], "en")[0] < 0.1
    assert np.all((en >= 0) & (en <= 1))
    with pytest.raises(ValueError, match="'xx'"):
        language_id_score([EN], "xx")


def test_length_ratio_is_symmetric_around_the_median_and_takes_empty_strings() -> None:
    # (len+1) ratios 2, 1/2 and three of 1: the median log ratio is 0.
    src = ["a" * 9, "a" * 19, "abc", "abcd", "a"]
    tgt = ["b" * 19, "b" * 9, "xyz", "wxyz", "b"]
    scores = length_ratio_score(src, tgt)
    assert scores[0] == pytest.approx(-np.log(2)) and scores[1] == pytest.approx(scores[0])
    assert np.all(scores[2:] == 0)
    assert np.isfinite(length_ratio_score(["", "abc"], ["abc", ""])).all()
    with pytest.raises(ValueError, match="2 sources but 1 targets"):
        length_ratio_score(["a", "b"], ["c"])


def test_combined_filter_rejects_copies_and_wrong_language_then_ranks_by_length() -> None:
    src = [SRC] * 5
    tgt = [EN, "The mayor opened the bridge.", SRC, "这座新桥周一由市长开通了，很多人参加了仪式。", EN]
    combined = combined_filter_score(src, tgt, "en")
    length = length_ratio_score(src, tgt)
    assert combined[0] == length[0] and combined[1] == length[1]  # kept: plain length ratio
    assert combined[2] == length[2] - REJECTED_OFFSET and combined[3] == length[3] - REJECTED_OFFSET
    assert combined[0] > combined[1] > max(combined[2], combined[3])
    scores = cheap_scores(src, tgt, "en")
    assert set(scores) == {"length_ratio", "copy", "language_id", "combined"}
    np.testing.assert_array_equal(scores["combined"], combined)
    np.testing.assert_array_equal(scores["copy"], copy_score(src, tgt))


def test_rejected_applies_each_filter_threshold() -> None:
    np.testing.assert_array_equal(rejected("copy", np.array([0.0, 0.49, 0.5, 1.0])), [True, True, False, False])
    np.testing.assert_array_equal(rejected("language_id", np.array([0.1, 0.9])), [True, False])
    # Length: beyond a factor of 2 from the typical ratio.
    np.testing.assert_array_equal(rejected("length_ratio", -np.array([0.0, 0.69, 0.7, 3.0])), [False, False, True, True])
    with pytest.raises(ValueError, match="no threshold for filter 'combined'"):
        rejected("combined", np.zeros(2))


def test_rule_auc_table_matches_hand_computation() -> None:
    ids = ["c1", "c2", "c3", "m1", "m2", "s1"]
    labels = {"c1": "clean", "c2": "clean", "c3": "clean", "m1": "misaligned", "m2": "misaligned", "s1": "source_copy"}
    first = np.array([3.0, 2.0, 0.5, 1.0, -1.0, 5.0])
    second = np.array([1.0, 1.0, 1.0, 0.0, 2.0, 0.0])
    table = rule_auc_table(ids, {"first": first, "second": second}, labels)
    assert table["first"] == auc_by_kind(ids, first, labels)
    # second: misaligned: clean(1) > m1(0) three times, < m2(2) three times -> 3/6; copy: 3/3.
    assert table["second"] == pytest.approx({"misaligned": 0.5, "source_copy": 1.0, "all": 6 / 9})
