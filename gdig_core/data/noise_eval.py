"""How well scores and selections separate clean pairs from injected noise (labels from
``gdig data corrupt``): clean share of a selection and ROC AUC of the quality score per kind,
for one score or a table of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def clean_share(selected_ids: Sequence[str], labels: Mapping[str, str]) -> float | None:
    """Fraction of ``selected_ids`` labelled ``clean``; None when no selected id has a label."""
    known = [labels[i] for i in selected_ids if i in labels]
    if not known:
        return None
    return sum(label == "clean" for label in known) / len(known)


def auc_by_kind(ids: Sequence[str], score: np.ndarray, labels: Mapping[str, str]) -> dict[str, float]:
    """ROC AUC of ``score`` (higher = better) at ranking clean pairs above each noise kind.

    For kind k the AUC uses clean pairs against pairs of kind k only; ``all`` pools every kind.
    Pairs with a non-finite score (bad rows) count as the worst score, so a scorer cannot gain
    by failing on hard pairs.
    """
    s = np.asarray(score, dtype=np.float64)
    s = np.where(np.isfinite(s), s, -np.inf)
    floor = np.min(s[np.isfinite(s)]) - 1.0 if np.isfinite(s).any() else 0.0
    s = np.where(np.isfinite(s), s, floor)
    kinds = np.array([labels.get(i, "") for i in ids], dtype=object)
    clean = kinds == "clean"
    out: dict[str, float] = {}
    if not clean.any():
        return out
    noisy_kinds = sorted({k for k in kinds if k and k != "clean"})
    for kind in [*noisy_kinds, "all"]:
        noisy = (kinds != "clean") & (kinds != "") if kind == "all" else kinds == kind
        if not noisy.any():
            continue
        mask = clean | noisy
        out[kind] = float(roc_auc_score(clean[mask].astype(int), s[mask]))
    return out


def rule_auc_table(
    ids: Sequence[str], scores: Mapping[str, np.ndarray], labels: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """``auc_by_kind`` for each named score: ``{score name: {kind or 'all': ROC AUC}}``."""
    return {name: auc_by_kind(ids, score, labels) for name, score in scores.items()}
