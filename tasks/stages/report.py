"""The report stage: comparison table and plot from stored selection and evaluation results,
published as a markdown artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from gdig_core.config import GdigConfig
from gdig_core.io import text_sha256
from tasks.caching.stage_cache import StageOutput, run_stage
from tasks.caching.stage_keys import key_parts, stage_calls
from tasks.stages.cells import CellResult
from tasks.stages.common import TASK_OPTS, stage_state
from tasks.stages.downstream import noise_labels
from tasks.stages.qe import QE_FILE


def read_pool(data: StageOutput) -> Any:
    from gdig_core.data.pairs import read_pairs

    return read_pairs(data.path("pool.parquet"))


def _stage_label(out: StageOutput) -> str:
    # Stages shared by several labels (two methods that selected the same pairs) show the caller's.
    s = out.summary
    if out.stage in ("finetune", "evaluation") and s.get("method"):
        parts = [out.stage, str(s["method"]), f"b{s.get('budget')}"]
        return "/".join(parts + ([f"s{s['seed']}"] if isinstance(s.get("seed"), int) else []))
    return out.label or out.stage


def stage_times(stages: list[StageOutput]) -> list[dict[str, Any]]:
    """How long each stage took when it was computed (whichever run computed it). Whether this
    run reused it is left out: an identical rerun must find the same report in the cache."""
    return [{"stage": _stage_label(o), "seconds": round(o.seconds, 1) if o.seconds is not None else None}
            for o in stages]


def _labels(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "metrics"}


def evaluation_hyps(
    evaluations: list[StageOutput], tgt_lang: str
) -> tuple[dict[str, dict[int, dict[str, list[str]]]], dict[str, list[str]]]:
    """(method -> finetuning seed -> test set -> hypotheses, test set -> references) from the
    evaluation stages' files, for the paired tests (zero-shot left out)."""
    from gdig_core.evaluation.evaluate import read_lines

    hyps: dict[str, dict[int, dict[str, list[str]]]] = {}
    refs: dict[str, list[str]] = {}
    for e in evaluations:
        s = e.summary
        if not isinstance(s.get("seed"), int):
            continue
        for test_dir in sorted(p for p in Path(e.dir).iterdir() if p.is_dir()):
            hyp, ref = test_dir / f"hypotheses.{tgt_lang}", test_dir / f"reference.{tgt_lang}"
            if hyp.exists() and ref.exists():
                hyps.setdefault(str(s["method"]), {}).setdefault(int(s["seed"]), {})[test_dir.name] = read_lines(hyp)
                refs.setdefault(test_dir.name, read_lines(ref))
    return hyps, refs


def cell_rows(cells: list[CellResult]) -> list[dict[str, Any]]:
    """One row per downstream cell: its selection and seed, the flow run that computed it (in
    this run or an earlier one), its seconds and BLEU per test set."""
    from gdig_core.report.writer import metric_table

    rows = []
    for c in cells:
        summary = (c.model or c.evaluation).summary if (c.model or c.evaluation) else {}
        row: dict[str, Any] = {"cell": c.label, "method": summary.get("method"), "budget": summary.get("budget"),
                               "seed": summary.get("seed"), "flow run": c.ran_in or "-"}
        for name, out in (("finetune_s", c.model), ("evaluation_s", c.evaluation)):
            row[name] = round(out.seconds, 1) if out is not None and out.seconds is not None else None
        if c.evaluation is not None:
            row |= {f"{t}/bleu": ms.get("bleu") for t, ms in metric_table(c.evaluation.summary.get("metrics", {})).items()}
        rows.append(row)
    return rows


def score_path_note(label: str, summary: dict[str, Any]) -> str:
    """Which path produced the scores at one model, and how many rows this run computed."""
    rows = f"{summary.get('rows_scored')} rows computed and {summary.get('rows_reused')} reused from earlier runs when these scores were made"
    store = summary.get("store") or {}
    if summary.get("path") == "store":
        return (f"scores at the {label} model: **projected gradient store** ({store.get('dim_per_layer')} dimensions per "
                f"tracked layer, {store.get('dtype')}; curvature fitted on the projected gradients), not exact "
                f"influence; {rows}")
    return f"scores at the {label} model: exact influence (full per-example gradients); {rows}"


@task(name="report", **TASK_OPTS)
def report_task(
    cfg: GdigConfig, run_dir: str, data: StageOutput, scores: dict[str, StageOutput],
    selections: list[StageOutput], evaluations: list[StageOutput], stages: list[StageOutput],
    command: str | None = None, qe: StageOutput | None = None, cells: list[CellResult] | None = None,
) -> StageOutput:
    calls = stage_calls("report", cfg, command=command)
    cells_table = cell_rows(cells or [])

    labels = noise_labels(data)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        pool = data.summary.get("pool", {})
        notes = [f"pool: {pool.get('rows_kept')} pairs kept of {pool.get('rows_read')} read "
                 f"({pool.get('quarantined')} quarantined, {pool.get('duplicates_removed')} duplicates, "
                 f"{pool.get('filtered_by_length', 0)} over the length filter)",
                 f"seed: {data.summary.get('seed', {}).get('rows_kept')} pairs"]
        if pool.get("noise_labels"):
            notes.append("noise labels: " + ", ".join(f"{k} {v}" for k, v in sorted(pool["noise_labels"].items())))
        notes += [score_path_note(label, o.summary) for label, o in scores.items()]
        aucs: list[dict[str, Any]] = []
        histogram = None
        if labels:
            from gdig_core.influence.scores import read_scores
            from gdig_core.report.evidence import auc_rows, plot_histograms

            tables = {label: read_scores(sorted(Path(o.dir).glob("scores/*.parquet"))) for label, o in scores.items()}
            qe_table = None
            if qe is not None:
                from gdig_core.filters.qe import read_qe

                qe_table = read_qe(qe.path(QE_FILE))
            ids, named = calls["evidence"](read_pool(data), tables, qe=qe_table)
            aucs = auc_rows(ids, named, labels)
            if plot_histograms(ids, named, labels, str(out / "score_distributions.png")):
                histogram = "score_distributions.png"
        from gdig_core.report.comparisons import method_costs
        from gdig_core.report.writer import comparison_rows
        from gdig_core.selection.outputs import length_profile

        eval_rows, sel_rows = [e.summary for e in evaluations], [s.summary for s in selections]
        hyps, refs = evaluation_hyps(evaluations, cfg.data.tgt_lang)
        significance = calls["significance"](comparison_rows(eval_rows, sel_rows), hyps, refs) if hyps else []
        pool_table = read_pool(data)
        times = stage_times(stages)
        result = calls["report"](
            eval_rows, sel_rows, out, notes=notes, score_aucs=aucs, histogram=histogram, stage_times=times,
            significance=significance, costs=method_costs(sel_rows, times),
            pool_profile=length_profile(pool_table.column("src").to_pylist(), pool_table.column("tgt").to_pylist()),
            cells=cells_table,
        )
        return {"rows": result["rows"], "score_aucs": aucs, "significance": significance}

    # Content of what is reported, so an identical recomputed selection keeps the report cached.
    # Labels (method, budget, seed) are what the report shows beside the outputs: hash them too. An
    # evaluation's metrics follow from its hypotheses (in its digest); its timings must not count.
    inputs = {"selections": text_sha256(*sorted(s.digest() + json.dumps(s.summary, sort_keys=True) for s in selections)),
              "evaluations": text_sha256(*sorted(e.digest() + json.dumps(_labels(e.summary), sort_keys=True)
                                                 for e in evaluations)),
              "scores": text_sha256(*sorted(f"{k}={o.digest()}:{score_path_note(k, o.summary)}" for k, o in scores.items())),
              "data": data.digest(),
              "qe": qe.digest() if qe is not None else "none",
              "stages": text_sha256(json.dumps(stage_times(stages), sort_keys=True)),
              "cells": text_sha256(json.dumps(cells_table, sort_keys=True))}
    result = run_stage(run_dir, "report", inputs, *key_parts(calls), compute)
    return stage_state(result, result.cached, "report")
