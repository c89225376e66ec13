import numpy as np
import pytest

from gdig_core.data.noise_eval import auc_by_kind, clean_share


def test_clean_share() -> None:
    labels = {"a": "clean", "b": "misaligned", "c": "clean", "d": "clean"}
    assert clean_share(["a", "b", "c", "d"], labels) == 0.75
    assert clean_share(["x"], labels) is None


def test_auc_by_kind_matches_hand_computation() -> None:
    ids = ["c1", "c2", "c3", "m1", "m2", "s1"]
    labels = {"c1": "clean", "c2": "clean", "c3": "clean", "m1": "misaligned", "m2": "misaligned", "s1": "source_copy"}
    score = np.array([3.0, 2.0, 0.5, 1.0, -1.0, 5.0])
    out = auc_by_kind(ids, score, labels)
    # misaligned: pairs (clean > noisy) out of 3*2: c1>m1, c1>m2, c2>m1, c2>m2, c3>m2, c3<m1 -> 5/6
    assert out["misaligned"] == pytest.approx(5 / 6)
    assert out["source_copy"] == pytest.approx(0.0)
    assert out["all"] == pytest.approx(5 / 9)


def test_bad_rows_rank_last() -> None:
    ids = ["c", "n"]
    out = auc_by_kind(ids, np.array([0.0, np.nan]), {"c": "clean", "n": "truncated"})
    assert out["truncated"] == 1.0
