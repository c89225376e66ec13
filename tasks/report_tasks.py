"""The report stage: comparison table and plot from stored selection and evaluation results,
published as a markdown artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from prefect import task

from gdig_core.config import GdigConfig
from gdig_core.io import text_sha256
from tasks.common import stage_state
from tasks.data_tasks import TASK_OPTS
from tasks.downstream_tasks import noise_labels
from tasks.stage_cache import StageOutput, run_stage


def _stage_label(out: StageOutput) -> str:
    s = out.summary
    if out.stage in ("finetune", "evaluation") and s.get("method"):
        parts = [out.stage, str(s["method"]), f"b{s.get('budget')}"]
        return "/".join(parts + ([f"s{s['seed']}"] if isinstance(s.get("seed"), int) else []))
    return out.label or out.stage


def stage_times(stages: list[StageOutput]) -> list[dict[str, Any]]:
    return [{"stage": _stage_label(o), "seconds": round(o.seconds, 1) if o.seconds is not None else None}
            for o in stages]


@task(name="report", **TASK_OPTS)
def report_task(
    cfg: GdigConfig, run_dir: str, data: StageOutput, scores: dict[str, StageOutput],
    selections: list[StageOutput], evaluations: list[StageOutput], stages: list[StageOutput],
    command: str | None = None,
) -> StageOutput:
    from gdig_core.report import build_report

    labels = noise_labels(data)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        pool = data.summary.get("pool", {})
        notes = [f"pool: {pool.get('rows_kept')} pairs kept of {pool.get('rows_read')} read "
                 f"({pool.get('quarantined')} quarantined, {pool.get('duplicates_removed')} duplicates, "
                 f"{pool.get('filtered_by_length', 0)} over the length filter)",
                 f"seed: {data.summary.get('seed', {}).get('rows_kept')} pairs"]
        if pool.get("noise_labels"):
            notes.append("noise labels: " + ", ".join(f"{k} {v}" for k, v in sorted(pool["noise_labels"].items())))
        aucs: list[dict[str, Any]] = []
        histogram = None
        if labels:
            from gdig_core.data import read_pairs
            from gdig_core.evidence import all_scores, auc_rows, plot_histograms
            from gdig_core.scores import read_scores

            tables = {label: read_scores(sorted(Path(o.dir).glob("scores/*.parquet"))) for label, o in scores.items()}
            ids, named = all_scores(read_pairs(data.path("pool.parquet")), tables, cfg.data.tgt_lang)
            aucs = auc_rows(ids, named, labels)
            if plot_histograms(ids, named, labels, str(out / "score_distributions.png")):
                histogram = "score_distributions.png"
        result = build_report(
            [e.summary for e in evaluations], [s.summary for s in selections], out,
            title=f"G-DIG report: {cfg.name}", notes=notes, score_aucs=aucs, histogram=histogram,
            stage_times=stage_times(stages), config_yaml=yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
            command=command,
        )
        return {"rows": result["rows"], "score_aucs": aucs}

    # Content of what is reported, so an identical recomputed selection keeps the report cached.
    # Labels (method, budget, seed) and metrics are what the report shows: hash them too.
    inputs = {"selections": text_sha256(*sorted(s.digest() + json.dumps(s.summary, sort_keys=True) for s in selections)),
              "evaluations": text_sha256(*sorted(e.digest() + json.dumps(e.summary, sort_keys=True) for e in evaluations)),
              "scores": text_sha256(*sorted(f"{k}={o.digest()}" for k, o in scores.items())),
              "data": data.digest(),
              "stages": text_sha256(json.dumps(stage_times(stages), sort_keys=True))}
    result = run_stage(run_dir, "report", inputs,
                       json.dumps({"config": cfg.model_dump(mode="json"), "command": command}, sort_keys=True),
                       ["gdig_core/report.py", "gdig_core/evidence.py", "gdig_core/noise_eval.py", "gdig_core/text_filters.py"],
                       compute)
    return stage_state(result, result.cached, "report")
