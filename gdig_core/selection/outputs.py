"""The files of one selection: ``selected.jsonl`` / ``selected.parquet`` (the pair schema
``id, src_lang, tgt_lang, src, tgt`` plus ``score``, ``rank``, ``cluster`` and ``reason``, in
rank order), ``candidates.parquet`` (one row per scored candidate: status, ranks, cluster,
distance to the centroid) and the ``summary.json`` record (sizes, exclusions, shortfall,
clusters, score distributions, config). Names and layout: :mod:`gdig_core.selection.layout`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gdig_core.config import MethodSpec, SelectionConfig
from gdig_core.io import atomic_path
from gdig_core.selection.context import pool_rows
from gdig_core.selection.layout import STATUSES
from gdig_core.selection.plan import Plan, row_reasons
from gdig_core.selection.quality import CHUNK_ROWS, QualityResult

if TYPE_CHECKING:
    from gdig_core.influence.scores import ScoreTable


def selected_table(scores: ScoreTable, pool: pa.Table, plan: Plan) -> pa.Table:
    picked = plan.picked
    ids = [str(scores.ids[i]) for i in picked]
    table = pool_rows(pool, ids)
    cluster = plan.cluster[picked] if plan.cluster is not None else np.full(len(picked), -1, np.int32)
    score = plan.score if plan.score is not None else scores.benefit_mean
    table = table.append_column("score", pa.array(score[picked], type=pa.float64(), from_pandas=True))
    table = table.append_column("rank", pa.array(np.arange(1, len(picked) + 1), type=pa.int64()))
    table = table.append_column("cluster", pa.array(cluster, type=pa.int32(), mask=cluster < 0))
    return table.append_column("reason", pa.array(plan.reasons, type=pa.string()))


def candidates_table(scores: ScoreTable, plan: Plan, q: QualityResult, qe: np.ndarray | None = None) -> pa.Table:
    """Every candidate's status, score, ranks, cluster and reason (and its QE score when the run
    computed one)."""
    n = len(scores.ids)
    rank = np.zeros(n, dtype=np.int64)
    rank[plan.picked] = np.arange(1, len(plan.picked) + 1)

    def opt_int(a: np.ndarray | None, typ: pa.DataType) -> pa.Array:
        a = np.zeros(n, dtype=np.int64) if a is None else a
        return pa.array(a, type=typ, mask=a <= 0)

    cluster = plan.cluster if plan.cluster is not None else np.full(n, -1, np.int32)
    dist = plan.distance if plan.distance is not None else np.full(n, np.nan, np.float32)
    return pa.table(
        {
            "id": pa.array([str(i) for i in scores.ids], type=pa.string()),
            "status": pa.DictionaryArray.from_arrays(
                pa.array(plan.status, type=pa.int8()), pa.array(STATUSES)
            ),
            "score": pa.array(plan.score if plan.score is not None else scores.benefit_mean,
                              type=pa.float64(), from_pandas=True),
            "frac_pos": pa.array(scores.benefit_frac_pos, type=pa.float64(), from_pandas=True),
            "rank": opt_int(rank, pa.int64()),
            "quality_rank": opt_int(plan.quality_rank, pa.int64()),
            "cluster": pa.array(cluster, type=pa.int32(), mask=cluster < 0),
            "cluster_rank": opt_int(plan.cluster_rank, pa.int64()),
            "distance": pa.array(dist, type=pa.float32(), from_pandas=True),
            "reason": pa.array(row_reasons(plan, scores, q), type=pa.string()),
        } | ({"qe": pa.array(qe, type=pa.float64(), from_pandas=True)} if qe is not None else {})
    )


def score_stats(values: np.ndarray) -> dict[str, Any]:
    """Distribution summary of finite scores (count, mean, std, quantiles, share positive)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"count": 0}
    qs = np.quantile(v, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return {
        "count": int(len(v)),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(qs[0]),
        "p05": float(qs[1]),
        "p25": float(qs[2]),
        "median": float(qs[3]),
        "p75": float(qs[4]),
        "p95": float(qs[5]),
        "max": float(qs[6]),
        "frac_positive": float((v > 0).mean()),
    }


def summary_record(
    scores: ScoreTable, cfg: SelectionConfig, spec: MethodSpec, budget: int, plan: Plan, q: QualityResult
) -> dict[str, Any]:
    counts = np.bincount(plan.status, minlength=len(STATUSES))
    return {
        "method": spec.name,
        "kind": spec.method,
        "spec": spec.model_dump(mode="json"),
        "variant": scores.primary_variant,
        "budget": budget,
        "size": int(len(plan.picked)),
        "shortfall": plan.shortfall,
        "status_counts": {s: int(c) for s, c in zip(STATUSES, counts, strict=True)},
        "pool": {
            "n_candidates": int(len(scores.ids)),
            "n_eligible": int(q.eligible.sum()),
            "n_excluded": int((~q.eligible).sum()),
            "excluded_reasons": q.excluded,
            "n_seeds": len(scores.seed_ids),
        },
        "quality": {"rule": cfg.quality_rule, "description": q.rule, "size": int(len(q.order))},
        "clustering": plan.clustering,
        "scores": {
            "selected": score_stats(scores.benefit_mean[plan.picked]),
            "quality_set": score_stats(scores.benefit_mean[q.order]),
            "eligible": score_stats(scores.benefit_mean[q.eligible]),
        },
        # Without the lists of budgets and methods: they do not change this selection, and
        # leaving them out keeps the file identical when only another budget is added.
        "config": cfg.model_dump(mode="json", exclude={"budgets", "methods"}),
    }


def length_profile(src: Sequence[str], tgt: Sequence[str]) -> dict[str, float | None]:
    """Lengths of a set of pairs (characters and whitespace words, mean and median) and the mean
    target/source character ratio: on a natural pool, where selections differ subtly, a method
    that only prefers short or long pairs shows here."""
    if not len(src):
        return {k: None for k in ("src_chars", "tgt_chars", "src_chars_median", "tgt_chars_median",
                                  "src_words", "tgt_words", "tgt_src_ratio")}
    s = np.array([len(x) for x in src], dtype=np.float64)
    t = np.array([len(x) for x in tgt], dtype=np.float64)
    return {
        "src_chars": float(s.mean()), "tgt_chars": float(t.mean()),
        "src_chars_median": float(np.median(s)), "tgt_chars_median": float(np.median(t)),
        "src_words": float(np.mean([len(x.split()) for x in src])),
        "tgt_words": float(np.mean([len(x.split()) for x in tgt])),
        "tgt_src_ratio": float(np.mean((t + 1) / (s + 1))),
    }


def write_jsonl(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for batch in table.to_batches(max_chunksize=CHUNK_ROWS):
            for row in batch.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def noise_summary(labels: np.ndarray, plan: Plan) -> dict[str, Any]:
    """Clean share of the selection, its noise by kind, and the ROC AUC of the method's score
    at ranking clean above each noise kind (over every labelled candidate)."""
    from gdig_core.data.noise_eval import auc_by_kind, clean_share

    ids = [str(i) for i in range(len(labels))]
    by_id = {i: str(k) for i, k in zip(ids, labels, strict=True) if k}
    picked = labels[plan.picked]
    known = picked[picked != ""]
    out: dict[str, Any] = {
        "clean_share": clean_share([ids[i] for i in plan.picked], by_id),
        "selected_by_kind": dict(sorted(Counter(str(k) for k in known).items())),
    }
    if plan.score is not None:
        out["auc"] = auc_by_kind(ids, plan.score, by_id)
    return out
