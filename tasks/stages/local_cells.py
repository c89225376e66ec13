"""Cells on this machine: in this process, or, with several GPUs, each in a child process pinned
to one device (``CUDA_VISIBLE_DEVICES``, from ``tasks.runtime.devices``), one cell per device at
a time. Child processes, not threads: transformers' model loading patches process-global state
(torch's init functions), so two models must never load in one process at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from prefect import task

from gdig_core.config import GdigConfig
from tasks.caching.stage_cache import PROJECT_ROOT
from tasks.runtime.devices import DevicePool, pinned_env
from tasks.runtime.faults import TransientError
from tasks.runtime.gpu_slots import gpu_slot
from tasks.runtime.records import current_records
from tasks.stages.cells import Cell, CellResult, Model, finished_cell, run_cell
from tasks.stages.common import TASK_OPTS
from tasks.stages.downstream import RAN_IN_ENV, ran_in

#: The child's last output lines that a failure quotes.
_TAIL_LINES = 30


@task(name="cell", **TASK_OPTS)
def cell_task(cfg: GdigConfig, run_dir: str, base: Model, cell: Cell, devices: DevicePool | None = None) -> CellResult:
    """One cell in this process, or, given a device pool, in a child process on a free device."""
    if devices is None:
        return run_cell(cfg, run_dir, base, cell)
    with devices.device() as index, gpu_slot(cfg.orchestration, f"cell {cell.label}"):
        run_pinned(cfg, run_dir, base, cell, index)
    result = finished_cell(cfg, run_dir, base, cell)
    if not result.complete(cfg, cell):
        raise RuntimeError(f"cell {cell.label}: its process on GPU {index} exited without writing its outputs")
    return result


def run_pinned(cfg: GdigConfig, run_dir: str, base: Model, cell: Cell, index: int) -> None:
    """Run the cell in a child process that sees only GPU ``index``; it writes into the run
    directory's cache like this process would (the run lock held here covers it)."""
    spec = {"config": cfg.model_dump(mode="json"), "run_dir": run_dir, "base": list(base),
            "cell": cell.model_dump(mode="json"), "records": str(current_records() or "")}
    where = " ".join(filter(None, [ran_in().get("ran_in"), f"GPU {index}"]))
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=run_dir, prefix=".cell-", delete=False) as fh:
        json.dump(spec, fh)
    try:
        proc = subprocess.run([sys.executable, "-m", "tasks.stages.pinned_cell", fh.name], cwd=PROJECT_ROOT,
                              env=os.environ | pinned_env(index) | {RAN_IN_ENV: where},
                              capture_output=True, text=True)
    finally:
        Path(fh.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-_TAIL_LINES:])
        # Killed by a signal (the OOM killer, a lost device): worth another try; an error is not,
        # unless it was a transient one (``is_transient`` reads the message of CUDA OOM).
        error = TransientError if proc.returncode < 0 or "out of memory" in tail.lower() else RuntimeError
        raise error(f"cell {cell.label}: its process on GPU {index} exited with {proc.returncode}:\n{tail}")
