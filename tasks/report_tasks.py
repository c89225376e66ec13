"""The report stage: comparison table and plot from stored selection and evaluation results,
published as a markdown artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import task

from gdig_core.config import GdigConfig
from gdig_core.io import text_sha256
from tasks.common import stage_state
from tasks.data_tasks import TASK_OPTS
from tasks.stage_cache import StageOutput, run_stage


def clean_share(selected: Path, labels: Path) -> float | None:
    """Share of selected pairs labelled ``clean`` when the pool carries noise labels
    (``gdig data corrupt``; the data stage keeps them in ``noise_labels.parquet``)."""
    if not labels.exists():
        return None
    noise = dict(zip(*(pq.read_table(labels).column(c).to_pylist() for c in ("id", "noise")), strict=True))
    ids = pq.read_table(selected, columns=["id"]).column("id").to_pylist()
    known = [noise[i] for i in ids if i in noise]
    return sum(v == "clean" for v in known) / len(known) if known else None


@task(name="report", **TASK_OPTS)
def report_task(
    cfg: GdigConfig, run_dir: str, data: StageOutput, selections: list[StageOutput], evaluations: list[StageOutput]
) -> StageOutput:
    from gdig_core.report import build_report

    def compute(out: Path, work: Path) -> dict[str, Any]:
        sels = [s.summary | {"clean_share": clean_share(s.path("selected.parquet"), data.path("noise_labels.parquet"))} for s in selections]
        evs = [e.summary for e in evaluations]
        pool = data.summary.get("pool", {})
        notes = [f"pool: {pool.get('rows_kept')} pairs kept of {pool.get('rows_read')} read "
                 f"({pool.get('quarantined')} quarantined, {pool.get('duplicates_removed')} duplicates)",
                 f"seed: {data.summary.get('seed', {}).get('rows_kept')} pairs"]
        result = build_report(evs, sels, out, title=f"G-DIG report: {cfg.name}", notes=notes)
        return {"rows": result["rows"]}

    # Content of what is reported, so an identical recomputed selection keeps the report cached.
    # Labels (method, budget, seed) and metrics are what the report shows: hash them too.
    inputs = {"selections": text_sha256(*sorted(s.digest() + json.dumps(s.summary, sort_keys=True) for s in selections)),
              "evaluations": text_sha256(*sorted(e.digest() + json.dumps(e.summary, sort_keys=True) for e in evaluations)),
              "data": data.digest()}
    result = run_stage(run_dir, "report", inputs, json.dumps({"name": cfg.name}), ["gdig_core/report.py"], compute)
    return stage_state(result, result.cached, "report")
