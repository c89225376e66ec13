"""What each per-candidate score does to labelled noise: the inputs of the report's evidence tables.

On a pool with noise labels (``data.noise`` or ``gdig data corrupt``), every score a selection
method could rank by is put side by side: each scoring model's score variants (mean benefit over
the seeds, and the fraction of seeds benefited, per curvature), the target NLL under that model,
the norm of the candidate's gradient, the cheap text scores (gdig_core.filters.rules), OpusFilter's
standard chain (gdig_core.filters.opusfilter, when installed) and the base model's QE scores
(gdig_core.filters.qe: each direction's NLL and the dual cross-entropy). For each
the ROC AUC of ranking clean pairs above each noise kind (``noise_eval.auc_by_kind``), and the
values themselves for histograms. Everything is aligned to the pool's row order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from gdig_core.data.noise_eval import auc_by_kind

if TYPE_CHECKING:
    import pyarrow as pa

    from gdig_core.influence.scores import ScoreTable

#: Display names of the cheap text scores (keys of filters.rules.cheap_scores).
TEXT_SCORE_NAMES = {"length_ratio": "length ratio", "copy": "not a copy", "language_id": "target language id",
                    "combined": "cheap filter (combined)"}


def _aligned(ids: Sequence[str], scores: ScoreTable, values: np.ndarray) -> np.ndarray:
    """``values`` (over the rows of ``scores``) reordered to ``ids``; NaN for ids not scored."""
    pos = {str(i): k for k, i in enumerate(scores.ids)}
    out = np.full(len(ids), np.nan)
    for k, i in enumerate(ids):
        j = pos.get(str(i))
        if j is not None:
            out[k] = values[j]
    return out


def model_scores(ids: Sequence[str], scores: ScoreTable, model_label: str) -> dict[str, np.ndarray]:
    """Named scores of one scoring model, aligned to ``ids`` (higher = ranked as better)."""
    out: dict[str, np.ndarray] = {}
    variants = scores.variants or {
        "primary": {"mean": scores.benefit_mean, "frac_pos": scores.benefit_frac_pos, "min": scores.benefit_min}
    }
    fractions_done: set[str] = set()
    for name, stats in variants.items():
        out[f"{model_label}: {name} mean benefit"] = _aligned(ids, scores, stats["mean"])
        curvature = name.split("-", 1)[0]
        if curvature not in fractions_done:  # every normalisation of a curvature has the same signs
            fractions_done.add(curvature)
            out[f"{model_label}: {curvature} fraction of seeds benefited"] = _aligned(ids, scores, stats["frac_pos"])
    out[f"{model_label}: -NLL of target"] = _aligned(ids, scores, -scores.loss)
    if scores.grad_norm is not None:
        out[f"{model_label}: -gradient norm"] = _aligned(ids, scores, -scores.grad_norm)
    return out


def text_scores(src: Sequence[str], tgt: Sequence[str], tgt_lang: str) -> dict[str, np.ndarray]:
    """The cheap text scores under their display names."""
    from gdig_core.filters.rules import cheap_scores

    raw = cheap_scores(list(src), list(tgt), tgt_lang)
    return {TEXT_SCORE_NAMES.get(k, k): np.asarray(v, dtype=np.float64) for k, v in raw.items()}


#: Display names of the QE table's columns (gdig_core.filters.qe), negated NLLs so that higher is better.
QE_SCORE_NAMES = {"qe": "QE: dual cross-entropy", "nll_fwd": "QE: -NLL target|source", "nll_bwd": "QE: -NLL source|target"}
OPUSFILTER_SCORE = "OpusFilter chain"


def qe_named(ids: Sequence[str], qe: pa.Table) -> dict[str, np.ndarray]:
    """The QE table's scores under their display names, aligned to ``ids``."""
    pos = {str(i): k for k, i in enumerate(qe.column("id").to_pylist())}
    out = {}
    for col, name in QE_SCORE_NAMES.items():
        values = qe.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
        sign = 1.0 if col == "qe" else -1.0
        out[name] = np.array([sign * values[pos[i]] if i in pos else np.nan for i in ids])
    return out


def opusfilter_named(src: Sequence[str], tgt: Sequence[str], src_lang: str, tgt_lang: str) -> dict[str, np.ndarray]:
    """OpusFilter's chain score, or nothing when the library is not installed."""
    from gdig_core.filters.opusfilter import OpusFilterUnavailable, opusfilter_scores

    try:
        return {OPUSFILTER_SCORE: opusfilter_scores(list(src), list(tgt), src_lang, tgt_lang)["score"]}
    except OpusFilterUnavailable:
        return {}


def all_scores(
    pool: pa.Table, scored: Mapping[str, ScoreTable], tgt_lang: str, src_lang: str | None = None,
    qe: pa.Table | None = None,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """(pool ids, named scores) for every scoring model, the cheap text scores, OpusFilter's chain
    (with ``src_lang``) and the QE scores (with ``qe``, the QE stage's table)."""
    ids = [str(i) for i in pool.column("id").to_pylist()]
    src, tgt = pool.column("src").to_pylist(), pool.column("tgt").to_pylist()
    named: dict[str, np.ndarray] = {}
    for label, table in scored.items():
        named.update(model_scores(ids, table, label))
    named.update(text_scores(src, tgt, tgt_lang))
    if src_lang is not None:
        named.update(opusfilter_named(src, tgt, src_lang, tgt_lang))
    if qe is not None:
        named.update(qe_named(ids, qe))
    return ids, named


def auc_rows(ids: Sequence[str], named: Mapping[str, np.ndarray], labels: Mapping[str, str]) -> list[dict]:
    """One row per score: ROC AUC per noise kind and over all noise (``all``)."""
    return [{"score": name, **auc_by_kind(ids, values, labels)} for name, values in named.items()]


def plot_histograms(
    ids: Sequence[str], named: Mapping[str, np.ndarray], labels: Mapping[str, str], path: str, columns: int = 3
) -> bool:
    """Per score: the distribution of clean pairs against each noise kind (step densities on the
    score's 1st-99th percentile range). False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gdig_core.io import atomic_path

    kinds = np.array([labels.get(str(i), "") for i in ids], dtype=object)
    groups = ["clean", *sorted({k for k in kinds if k and k != "clean"})]
    if len(groups) < 2 or not named:
        return False
    rows = -(-len(named) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.1 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (name, values) in zip(axes.flat, named.items(), strict=False):
        finite = np.isfinite(values)
        if not finite.any():
            ax.set_visible(False)
            continue
        lo, hi = np.percentile(values[finite], [1, 99])
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
        for k, group in enumerate(groups):
            vals = np.clip(values[finite & (kinds == group)], lo, hi)
            if len(vals):
                ax.hist(vals, bins=bins, density=True, histtype="step", linewidth=2.0 if group == "clean" else 1.2,
                        color="black" if group == "clean" else colours(k % 10), label=f"{group} ({len(vals)})")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(named):]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(groups), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return True
