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
from tasks.stage_keys import key_parts, stage_calls


def clean_share(selected: Path, labels: Path) -> float | None:
    """Share of selected pairs labelled ``clean`` when the pool carries noise labels
    (``gdig data corrupt``; the data stage keeps them in ``noise_labels.parquet``)."""
    if not labels.exists():
        return None
    noise = dict(zip(*(pq.read_table(labels).column(c).to_pylist() for c in ("id", "noise")), strict=True))
    ids = pq.read_table(selected, columns=["id"]).column("id").to_pylist()
    known = [noise[i] for i in ids if i in noise]
    return sum(v == "clean" for v in known) / len(known) if known else None


def _labels(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "metrics"}


@task(name="report", **TASK_OPTS)
def report_task(
    cfg: GdigConfig, run_dir: str, data: StageOutput, selections: list[StageOutput], evaluations: list[StageOutput]
) -> StageOutput:
    calls = stage_calls("report", cfg)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        sels = [s.summary | {"clean_share": clean_share(s.path("selected.parquet"), data.path("noise_labels.parquet"))} for s in selections]
        evs = [e.summary for e in evaluations]
        pool = data.summary.get("pool", {})
        notes = [f"pool: {pool.get('rows_kept')} pairs kept of {pool.get('rows_read')} read "
                 f"({pool.get('quarantined')} quarantined, {pool.get('duplicates_removed')} duplicates)",
                 f"seed: {data.summary.get('seed', {}).get('rows_kept')} pairs"]
        result = calls["report"](evs, sels, out, notes=notes)
        return {"rows": result["rows"]}

    # Content of what is reported, so an identical recomputed selection keeps the report cached.
    # Labels (method, budget, seed) are what the report shows beside the outputs: hash them too. An
    # evaluation's metrics follow from its hypotheses (in its digest); its timings must not count.
    inputs = {"selections": text_sha256(*sorted(s.digest() + json.dumps(s.summary, sort_keys=True) for s in selections)),
              "evaluations": text_sha256(*sorted(e.digest() + json.dumps(_labels(e.summary), sort_keys=True)
                                                 for e in evaluations)),
              "data": data.digest()}
    result = run_stage(run_dir, "report", inputs, *key_parts(calls), compute)
    return stage_state(result, result.cached, "report")
