"""The body of one dispatched cell, run by the downstream deployment's flow on a worker: fetch
the inputs, point data.data_dir at the fetched test sets, run the cell in a scratch run directory
with the same code as in the pipeline's own process (``tasks.stages.cells.run_cell``: same keys),
then upload its outputs and sidecar (``tasks.stages.cell_outputs``). It beats a heartbeat the
whole time and holds one slot of the GPU limit while it works."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

from gdig_core.config import GdigConfig
from gdig_core.integrity import file_digest
from gdig_core.report.writer import metric_table
from tasks.runtime import artifacts
from tasks.runtime.faults import inject
from tasks.runtime.gpu_slots import gpu_slot
from tasks.sharding import storage
from tasks.sharding.heartbeat import beating
from tasks.sharding.work import cache_root
from tasks.stages.cell_jobs import CellJob
from tasks.stages.cell_outputs import pack_cell
from tasks.stages.cells import Cell, CellResult, run_cell
from tasks.stages.downstream import evaluate_stage, ran_in


class CellMismatch(RuntimeError):
    """The worker computed other keys than the pipeline expects: another gdig version or settings."""


def _with_local_test_sets(cfg: GdigConfig, test_sets: dict[str, str], data_dir: Path) -> GdigConfig:
    """``cfg`` reading its test sets from fetched copies: links under ``data_dir`` at the
    configured relative paths (data.data_dir is in no key, the files' hashes are)."""
    if not test_sets:
        return cfg
    for given, location in test_sets.items():
        link = data_dir / given
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(storage.fetch(location, cache_root()).resolve())
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": str(data_dir)})})


def _local_cell(job: CellJob) -> Cell:
    """The job's cell with its selection read from the fetched pairs (checked against their digest)."""
    if job.pairs is None or job.cell.selection is None:
        return job.cell
    pairs = storage.fetch(job.pairs, cache_root())
    expected = job.cell.selection.files["selected.parquet"]
    if file_digest(pairs) != expected:
        raise OSError(f"cell {job.cell.label}: {job.pairs} does not hash to the selection's digest {expected}")
    return job.cell.model_copy(update={"selection": job.cell.selection.model_copy(update={"dir": str(pairs.parent)})})


def _compute(cfg: GdigConfig, job: CellJob, run_dir: str) -> CellResult:
    base = (str(storage.fetch(job.base, cache_root())) if job.base_staged else job.base, job.base_fingerprint)
    if job.model is not None and job.model_output is not None:  # its finetune is done: evaluate it
        model = (str(storage.fetch(job.model, cache_root())), job.model_output.digest("model"))
        meta = {k: v for k, v in job.model_output.summary.items() if k != "ran_in"}
        evaluation = evaluate_stage(cfg, run_dir, model, job.cell.label, meta)
        return CellResult(label=job.cell.label, evaluation=evaluation)
    result = run_cell(cfg, run_dir, base, _local_cell(job))
    if result.model is not None and result.model.key != job.finetune_key:
        raise CellMismatch(
            f"cell {job.cell.label}: this worker's finetune key is {result.model.key[:16]}, the pipeline expects "
            f"{(job.finetune_key or '')[:16]}: the worker runs another version of gdig (the checkout in "
            "GDIG_PROJECT_DIR) than the pipeline; deploy the same one")
    return result


def _metrics_row(job: CellJob, result: CellResult) -> dict[str, Any]:
    row: dict[str, Any] = {"cell": job.cell.label} | {k: v for k, v in job.cell.meta.items() if k != "kind"}
    if result.evaluation is not None:
        for test, ms in metric_table(result.evaluation.summary.get("metrics", {})).items():
            row |= {f"{test}/{m}": v for m, v in ms.items()}
    return row


def execute_cell_job(job: CellJob, flow_run_id: str) -> dict[str, Any]:
    """Compute the cell and publish its outputs; returns the sidecar's summary (keys, where it
    ran, how long each part took)."""
    cfg = GdigConfig.model_validate(job.config)
    orch = cfg.orchestration
    scratch = cache_root() / "cells" / job.cell_id[:24]
    with beating(job.heartbeat, orch.heartbeat_seconds, flow_run_id), \
            gpu_slot(orch, f"cell {job.cell.label}"):
        inject("cell", 0)  # test hook: GDIG_FAULTS={"delay": s} holds every cell here, beating
        cfg = _with_local_test_sets(cfg, job.test_sets, scratch / "data")
        # Kept between tries on this worker: a killed finetune resumes from its checkpoint.
        result = _compute(cfg, job, str(scratch / "run"))
        summary = {"label": job.cell.label, "ran_in": ran_in().get("ran_in"), "host": socket.gethostname(),
                   **{out.stage: out.key for out in (result.model, result.evaluation) if out is not None},
                   "seconds": {out.stage: out.seconds for out in (result.model, result.evaluation) if out is not None}}
        pack_cell(result, job.output, summary, scratch)
    artifacts.table(artifacts.artifact_key("cell", job.cell.label, job.cell_id[:8]), [_metrics_row(job, result)],
                    f"Cell {job.cell.label}: its selection, seed and metrics")
    shutil.rmtree(scratch, ignore_errors=True)
    return summary
