"""The pool's texts and noise labels aligned to the rows of a score table, and the cheap
pre-filters a method may apply before it runs (``MethodSpec.prefilter``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gdig_core.config import MethodSpec
from gdig_core.selection.quality import QualityResult, SelectionError

if TYPE_CHECKING:
    from gdig_core.scores import ScoreTable

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


@dataclass
class PairContext:
    """What the text-based methods and the oracle need beyond the scores, aligned to score rows."""

    src: list[str] | None = None
    tgt: list[str] | None = None
    tgt_lang: str | None = None
    labels: np.ndarray | None = None  # object [N]: noise label per score row ("" when unknown)
    _text: dict[str, np.ndarray] = field(default_factory=dict)

    def text_score(self, name: str) -> np.ndarray:
        """A cheap per-pair score (higher = more likely clean), computed once per context."""
        if name not in self._text:
            if self.src is None or self.tgt is None:
                raise SelectionError(f"the {name!r} score needs the pool's source and target texts")
            from gdig_core.text_filters import cheap_scores

            self._text.update(cheap_scores(self.src, self.tgt, self.tgt_lang or "en"))
        return self._text[name]


def pair_context(
    scores: ScoreTable, pool: pa.Table | None, labels: dict[str, str] | None, tgt_lang: str | None = None
) -> PairContext:
    """Align the pool's texts and the noise labels to the rows of ``scores``."""
    ctx = PairContext(tgt_lang=tgt_lang)
    if pool is not None:
        rows = pool_rows(pool, [str(i) for i in scores.ids])
        ctx.src, ctx.tgt = rows.column("src").to_pylist(), rows.column("tgt").to_pylist()
        if tgt_lang is None and rows.num_rows:
            ctx.tgt_lang = rows.column("tgt_lang")[0].as_py()
    if labels:
        ctx.labels = np.array([labels.get(str(i), "") for i in scores.ids], dtype=object)
    return ctx


def prefiltered(q: QualityResult, spec: MethodSpec, ctx: PairContext) -> QualityResult:
    """Drop what the method's cheap pre-filters reject from eligibility (and the quality set)."""
    if not spec.prefilter:
        return q
    from gdig_core.text_filters import rejected

    excluded = dict(q.excluded)
    eligible = q.eligible.copy()
    exclusion = q.exclusion.copy() if q.exclusion is not None else np.full(len(eligible), "", dtype=object)
    for name in spec.prefilter:
        bad = rejected(name, ctx.text_score(name)) & eligible
        excluded[f"prefilter_{name}"] = int(bad.sum())
        exclusion[bad] = f"rejected by the {name} pre-filter"
        eligible &= ~bad
    keep = eligible[q.order]
    return QualityResult(eligible, q.mask & eligible, q.order[keep], excluded, q.rule + " after pre-filters "
                         + "+".join(spec.prefilter), exclusion)
