"""The pool's texts, noise labels and QE scores aligned to the rows of a score table, and the
pre-filters a method may apply before it runs (``MethodSpec.prefilter``): the cheap rules, the
OpusFilter chain and the QE cut."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gdig_core.config import MethodSpec
from gdig_core.selection.quality import SelectionError

if TYPE_CHECKING:
    from gdig_core.influence.scores import ScoreTable

PAIR_COLUMNS = ("id", "src_lang", "tgt_lang", "src", "tgt")


def pool_rows(pool: pa.Table, ids: Sequence[str]) -> pa.Table:
    missing_cols = [c for c in PAIR_COLUMNS if c not in pool.column_names]
    if missing_cols:
        raise SelectionError(f"pool table lacks columns {missing_cols}; expected {list(PAIR_COLUMNS)}")
    pool_ids = pool.column("id").cast(pa.string())
    if pc.count_distinct(pool_ids).as_py() != len(pool_ids):
        raise SelectionError("pool ids are not unique")
    idx = pc.index_in(pa.array(list(ids), type=pa.string()), value_set=pool_ids)
    if idx.null_count:
        lost = [ids[i] for i in np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))[:5]]
        raise SelectionError(f"{idx.null_count} selected ids are not in the pool table, e.g. {lost}")
    rows = pool.select(list(PAIR_COLUMNS)).take(idx)
    return pa.table({c: rows.column(c).cast(pa.string()) for c in PAIR_COLUMNS})


#: Pre-filters by name: what each rejects is decided by :meth:`PairContext.rejected`.
PREFILTERS = ("copy", "language_id", "length_ratio", "cheap", "opusfilter", "qe")


@dataclass
class PairContext:
    """What the text-based methods, the QE methods and the oracle need beyond the scores,
    aligned to score rows."""

    src: list[str] | None = None
    tgt: list[str] | None = None
    tgt_lang: str | None = None
    labels: np.ndarray | None = None  # object [N]: noise label per score row ("" when unknown)
    src_lang: str | None = None
    #: float64 [N]: the dual cross-entropy QE score per row (gdig_core.filters.qe), NaN where not scored;
    #: None when the run computed none.
    qe: np.ndarray | None = None
    _text: dict[str, np.ndarray] = field(default_factory=dict)

    def text_score(self, name: str) -> np.ndarray:
        """A per-pair score (higher = more likely clean), computed once per context: the cheap
        text scores (gdig_core.filters.rules), ``opusfilter`` (gdig_core.filters.opusfilter) or ``qe``."""
        if name == "qe":
            if self.qe is None:
                raise SelectionError("the 'qe' score needs the QE stage's scores (qe.enabled, or a method or "
                                     "pre-filter that uses qe)")
            return self.qe
        if name not in self._text:
            if self.src is None or self.tgt is None:
                raise SelectionError(f"the {name!r} score needs the pool's source and target texts")
            if name in ("opusfilter", "opusfilter_accepted"):
                from gdig_core.filters.opusfilter import opusfilter_scores

                chain = opusfilter_scores(self.src, self.tgt, self.src_lang or "de", self.tgt_lang or "en")
                self._text["opusfilter"] = chain["score"]
                self._text["opusfilter_accepted"] = chain["accepted"]
            else:
                from gdig_core.filters.rules import cheap_scores

                self._text.update(cheap_scores(self.src, self.tgt, self.tgt_lang or "en"))
        return self._text[name]

    def rejected(self, name: str, eligible: np.ndarray, qe_keep: float) -> np.ndarray:
        """Which eligible rows the pre-filter ``name`` rejects: a rule's own threshold, OpusFilter's
        chain (any filter failing), or for ``qe`` all but the best ``qe_keep`` share of the eligible
        rows by QE score (and every row without one)."""
        from gdig_core.filters.rules import rejected

        if name == "opusfilter":
            bad = ~self.text_score("opusfilter_accepted").astype(bool)
        elif name == "cheap":
            from gdig_core.filters.rules import REJECTED_OFFSET

            # Rejected pairs sit REJECTED_OFFSET below the kept ones, whatever their length part.
            bad = self.text_score("combined") < -REJECTED_OFFSET / 2
        elif name == "qe":
            value = self.text_score("qe")
            bad = ~np.isfinite(value)
            pool = np.flatnonzero(eligible & ~bad)
            keep = int(np.ceil(qe_keep * len(pool)))
            ranked = pool[np.argsort(-value[pool], kind="stable")]
            bad = bad.copy()
            bad[ranked[keep:]] = True
        else:
            bad = rejected(name, self.text_score(name))
        return bad & eligible


def pair_context(
    scores: ScoreTable, pool: pa.Table | None, labels: dict[str, str] | None, tgt_lang: str | None = None,
    qe: dict[str, float] | None = None,
) -> PairContext:
    """Align the pool's texts, the noise labels and the QE scores to the rows of ``scores``."""
    ctx = PairContext(tgt_lang=tgt_lang)
    if pool is not None:
        rows = pool_rows(pool, [str(i) for i in scores.ids])
        ctx.src, ctx.tgt = rows.column("src").to_pylist(), rows.column("tgt").to_pylist()
        if rows.num_rows:
            ctx.src_lang = rows.column("src_lang")[0].as_py()
            if tgt_lang is None:
                ctx.tgt_lang = rows.column("tgt_lang")[0].as_py()
    if labels:
        ctx.labels = np.array([labels.get(str(i), "") for i in scores.ids], dtype=object)
    if qe is not None:
        ctx.qe = np.array([qe.get(str(i), np.nan) for i in scores.ids], dtype=np.float64)
        ctx.qe[~np.isfinite(ctx.qe)] = np.nan
    return ctx


def prefilter_keep(
    eligible: np.ndarray, spec: MethodSpec, ctx: PairContext, qe_keep: float
) -> tuple[np.ndarray, dict[str, int], dict[int, str], np.ndarray]:
    """Apply the method's pre-filters in order to ``eligible``: (still eligible, rejected count per
    pre-filter, row -> which pre-filter rejected it, int8 [N] the rejecting filter's position from
    1, 0 where none did). Each filter sees only what the ones before it kept, so the QE cut keeps
    its share of what the rules let through."""
    keep = eligible.copy()
    counts: dict[str, int] = {}
    why: dict[int, str] = {}
    stage = np.zeros(len(eligible), dtype=np.int8)
    for k, name in enumerate(spec.prefilter, start=1):
        bad = ctx.rejected(name, keep, qe_keep)
        counts[f"prefilter_{name}"] = int(bad.sum())
        for i in np.flatnonzero(bad):
            why[int(i)] = f"rejected by the {name} pre-filter"
        stage[bad] = k
        keep &= ~bad
    return keep, counts, why, stage


def cascade_score(score: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """A cascade's ranking score over every candidate: the method's own score where the pre-filters
    kept the row, and below all of those for the rows they rejected, the earliest rejection lowest
    (so the ROC AUC of a cascade measures the whole cascade, not only its last step)."""
    out = np.asarray(score, dtype=np.float64).copy()
    kept = (stage == 0) & np.isfinite(out)
    floor = float(out[kept].min()) if kept.any() else 0.0
    n = int(stage.max()) if len(stage) else 0
    for k in range(1, n + 1):
        out[stage == k] = floor - (n - k + 1)
    return out
