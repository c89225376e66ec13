"""What a dispatched cell gets: its inputs as locations on shared storage (uploaded once,
content-addressed, by ``tasks.sharding.storage.stage_in``, as for shards), the keys its outputs
must have, and where its outputs and heartbeat go. The parameters of one flow run of the
downstream deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gdig_core.config import GdigConfig, resolve_data_path
from tasks.caching.stage_cache import StageOutput
from tasks.sharding import storage
from tasks.stages.cells import Cell, Model, cell_id
from tasks.stages.common import raw_file_hashes
from tasks.stages.downstream import finetune_key


class CellJob(BaseModel):
    """Everything one dispatched cell needs, as locations and hashes."""

    cell: Cell
    cell_id: str
    #: The full GdigConfig as a JSON-able dict (the worker rebuilds it).
    config: dict[str, Any]
    #: The base model: a location to fetch (``base_staged``), or a hub id.
    base: str
    base_fingerprint: str
    base_staged: bool
    #: The selection's ``selected.parquet`` (to finetune on), or None.
    pairs: str | None = None
    #: A finetune this run has already: its model directory and stage output; the cell then only
    #: evaluates it.
    model: str | None = None
    model_output: StageOutput | None = None
    #: Test-set paths as configured (relative to data.data_dir) -> their locations.
    test_sets: dict[str, str] = {}
    #: The key the finetune must get on the worker (another gdig version gets another one).
    finetune_key: str | None = None
    output: str
    heartbeat: str

    @property
    def run_name(self) -> str:
        """The cell's flow run name in the UI: ``cell-gdig-b200-s0-1a2b3c4d``."""
        return "cell-" + self.cell.label.replace("/", "-") + "-" + self.cell_id[:8]


def cells_root(cfg: GdigConfig, run_dir: str) -> str:
    """Where dispatched cells' outputs and heartbeats go: shared storage, or the run directory
    when the workers see it."""
    return storage.join(cfg.orchestration.shared_storage or str(Path(run_dir).resolve()), "cells")


def _staged_test_sets(cfg: GdigConfig) -> dict[str, str]:
    # Relative paths only: they are found under data.data_dir, which the worker points at its
    # copies (data_dir is in no key). An absolute path must exist on the workers as it is.
    shared = cfg.orchestration.shared_storage
    out: dict[str, str] = {}
    for ts in cfg.evaluation.test_sets:
        for given in filter(None, (ts.path, ts.tgt_path)):
            if Path(given).is_absolute():
                continue
            path = resolve_data_path(cfg.data, given)
            out[given] = storage.stage_in(path, shared, raw_file_hashes({"file": path})["file"])
    return out


def cell_job(cfg: GdigConfig, run_dir: str, base: Model, cell: Cell, model: StageOutput | None = None) -> CellJob:
    """The job of ``cell``, its inputs uploaded to shared storage when that is remote. With
    ``model`` (the cell's finetune, already in this run's cache) the job only evaluates it."""
    shared = cfg.orchestration.shared_storage
    cid = cell_id(cfg, base, cell)
    root = cells_root(cfg, run_dir)
    staged = Path(base[0]).exists()
    job = CellJob(cell=cell, cell_id=cid, config=cfg.model_dump(mode="json"),
                  base=storage.stage_in(base[0], shared, base[1]) if staged else base[0], base_fingerprint=base[1],
                  base_staged=staged, output=storage.join(root, f"{cid[:24]}.tar"),
                  heartbeat=storage.join(root, f"{cid[:24]}.heartbeat"))
    if cfg.evaluation.enabled:
        job.test_sets = _staged_test_sets(cfg)
    if model is not None:
        job.model = storage.stage_in(model.path("model"), shared, model.digest("model"))
        job.model_output = model
    elif cell.selection is not None:
        pairs = cell.selection.path("selected.parquet")
        job.pairs = storage.stage_in(pairs, shared, cell.selection.files["selected.parquet"])
        job.finetune_key = finetune_key(cfg, base, cell.selection, cell.seed)
    return job
