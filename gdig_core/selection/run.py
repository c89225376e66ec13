"""Running a selection: :func:`plan_selection` decides, :func:`select` decides and writes,
:func:`selection_plan` lists the (method, budget) pairs a config asks for and
:func:`run_selection` runs them all into the conventional layout.

Determinism: ranks break ties by candidate id, k-means uses ``SelectionConfig.seed``, clusters
are renumbered so that cluster 0 holds the best-ranked member, and no output holds a time stamp,
so the same inputs give byte-identical files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from gdig_core.config import MethodSpec, SelectionConfig, method_spec
from gdig_core.io import atomic_write_json, atomic_write_text
from gdig_core.selection import methods as _builtin_methods  # noqa: F401  (registers the built-ins)
from gdig_core.selection.context import PairContext, cascade_score, pair_context, prefilter_keep
from gdig_core.selection.layout import (
    CANDIDATES,
    OUTPUT_FILES,
    SELECTED_JSONL,
    SELECTED_PARQUET,
    SUMMARY,
    selection_dir,
)
from gdig_core.selection.outputs import (
    candidates_table,
    length_profile,
    noise_summary,
    selected_table,
    summary_record,
    write_jsonl,
    write_parquet,
)
from gdig_core.selection.plan import MethodInput, Plan
from gdig_core.selection.quality import QualityResult, SelectionError, id_order, quality_rank
from gdig_core.selection.registry import get_method, method_names, uses_budget

if TYPE_CHECKING:
    from gdig_core.influence.scores import ScoreTable

log = logging.getLogger(__name__)


@dataclass
class SelectionResult:
    """The outcome of :func:`select`; the files in ``out_dir`` are the durable record."""

    method: str
    budget: int
    out_dir: Path
    ids: list[str]
    shortfall: dict[str, Any] | None
    summary: dict[str, Any]
    files: dict[str, Path]

    @property
    def size(self) -> int:
        return len(self.ids)


def check_budget(budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise SelectionError(f"budget must be a positive integer, got {budget!r}")


def _spec(method: str | MethodSpec) -> MethodSpec:
    kind = method if isinstance(method, str) else method.method
    if get_method(kind) is None:
        raise SelectionError(f"unknown selection method {kind!r}; expected one of {', '.join(method_names())}")
    return method_spec(method)


def effective_config(cfg: SelectionConfig, spec: MethodSpec) -> SelectionConfig:
    """The selection section as one method sees it: with the method's own overrides applied and
    without the lists of methods and budgets (they do not change what one selection picks)."""
    keys = ("quality_rule", "tau", "top_k", "min_mean", "shortfall", "seed", "qe_keep")
    update = {k: getattr(spec, k) for k in keys if getattr(spec, k) is not None}
    return SelectionConfig.model_validate(cfg.model_dump(exclude={"budgets", "methods"}) | update)


def plan_selection(
    scores: ScoreTable,
    cfg: SelectionConfig,
    method: str | MethodSpec,
    budget: int,
    ctx: PairContext | None = None,
) -> tuple[Plan, QualityResult]:
    """Decide a selection without writing anything (see :func:`select`)."""
    check_budget(budget)
    spec = _spec(method)
    # A new name, not ``cfg``: methods are looked up by name, where the cache-key walk
    # (tasks.key_derivation) cannot follow; it sees the section read less methods and budgets.
    settings = effective_config(cfg, spec)
    ctx = ctx or PairContext()
    try:
        scores = scores.for_variant(spec.variant)
    except KeyError as err:
        raise SelectionError(str(err.args[0])) from None
    tie = id_order(scores.ids)
    keep = None
    if spec.prefilter:
        def keep(eligible: np.ndarray) -> tuple:  # noqa: ANN202 - the pre-filters of this method
            return prefilter_keep(eligible, spec, ctx, settings.qe_keep)
    q = quality_rank(scores, settings, budget, tie, prefilter=keep, prefilter_names=spec.prefilter)
    registered = get_method(spec.method)
    assert registered is not None  # _spec checked it
    plan = registered.plan(MethodInput(scores, q, settings, budget, tie, ctx, spec.method))
    if q.prefilter_stage is not None and plan.score is not None:
        plan.score = cascade_score(plan.score, q.prefilter_stage)
    return plan, q


def select(
    scores: ScoreTable,
    pool: pa.Table,
    cfg: SelectionConfig,
    method: str | MethodSpec,
    budget: int,
    out_dir: str | Path,
    plots: bool = True,
    labels: dict[str, str] | None = None,
    tgt_lang: str | None = None,
    qe: dict[str, float] | None = None,
) -> SelectionResult:
    """Select ``budget`` candidates with ``method`` and write every output file into ``out_dir``.

    ``scores`` comes from :func:`gdig_core.influence.scores.read_scores`; ``pool`` is the pair table
    (columns ``id, src_lang, tgt_lang, src, tgt``) holding every scored id. ``method`` is a
    registered kind or a :class:`~gdig_core.config.MethodSpec`. ``labels`` (id -> noise label)
    enables the clean oracle and adds the clean share and the ROC AUC of the method's score per
    noise kind to ``summary.json``. ``qe`` (id -> dual cross-entropy score, gdig_core.filters.qe) serves the
    ``qe`` method and pre-filter. Raises :class:`SelectionError` for a non-positive budget, an
    unknown method, a missing score variant or ids missing from the pool. Each file is written
    atomically and ``summary.json`` last, after the previous one was removed: a directory with a
    ``summary.json`` holds one complete selection.
    """
    out = Path(out_dir)
    check_budget(budget)
    spec = _spec(method)
    try:
        scores = scores.for_variant(spec.variant)
    except KeyError as err:
        raise SelectionError(str(err.args[0])) from None
    ctx = pair_context(scores, pool, labels, tgt_lang, qe)
    plan, q = plan_selection(scores, cfg, spec, budget, ctx)
    eff = effective_config(cfg, spec)
    (out / SUMMARY).unlink(missing_ok=True)  # until the new files are all in place
    if plan.shortfall:
        plan.shortfall["method"] = spec.name
        log.warning("selection %s b%d: %s", spec.name, budget, plan.shortfall["message"])
    selected = selected_table(scores, pool, plan)
    summary = summary_record(scores, eff, spec, budget, plan, q)
    summary["length_profile"] = length_profile(selected.column("src").to_pylist(), selected.column("tgt").to_pylist())
    if ctx.labels is not None:
        summary["noise"] = noise_summary(ctx.labels, plan)
    files = {
        "selected_jsonl": out / SELECTED_JSONL,
        "selected_parquet": out / SELECTED_PARQUET,
        "candidates": out / CANDIDATES,
    }
    write_parquet(files["selected_parquet"], selected)
    write_jsonl(files["selected_jsonl"], selected)
    write_parquet(files["candidates"], candidates_table(scores, plan, q, ctx.qe))
    if plots:
        from gdig_core.selection.plots import write_plots  # matplotlib only when plotting

        benefit = scores.benefit_mean
        files.update(write_plots(out, benefit[q.eligible], benefit[q.order], benefit[plan.picked], summary))
    files["summary"] = out / SUMMARY
    for stale in set(OUTPUT_FILES) - {p.name for p in files.values()}:
        (out / stale).unlink(missing_ok=True)  # e.g. a clusters.png from an earlier run with plots
    summary["files"] = sorted(p.name for p in files.values())
    atomic_write_json(files["summary"], summary)
    ids = selected.column("id").to_pylist()
    return SelectionResult(spec.name, budget, out, ids, plan.shortfall, summary, files)


def selection_plan(cfg: SelectionConfig) -> list[tuple[MethodSpec, int]]:
    """(method, budget) pairs a config asks for; a method that ignores the budget (``full``)
    runs once, at the largest."""
    out: list[tuple[MethodSpec, int]] = []
    for spec in cfg.methods:
        for budget in cfg.budgets if uses_budget(spec.method) else [max(cfg.budgets)]:
            out.append((spec, budget))
    return out


def run_selection(
    scores: ScoreTable, pool: pa.Table, cfg: SelectionConfig, root: str | Path, plots: bool = True
) -> list[SelectionResult]:
    """Every (method, budget) of :func:`selection_plan` into :func:`selection_dir`, and
    ``<root>/index.json`` with one entry per selection."""
    results = [
        select(scores, pool, cfg, spec, budget, selection_dir(root, spec.name, budget, spec.method), plots)
        for spec, budget in selection_plan(cfg)
    ]
    index = [
        {
            "method": r.method,
            "budget": r.budget,
            "size": r.size,
            "dir": str(r.out_dir.relative_to(root)),
            "shortfall": r.shortfall["message"] if r.shortfall else None,
        }
        for r in results
    ]
    atomic_write_text(Path(root) / "index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    return results
