"""The downstream grid: every cell run once (cells that would compute the same thing share one
run), in this process, on this machine's GPUs, or on the downstream deployment
(``orchestration.downstream_mode``). Cells already done are skipped; a cell that fails after its
retries fails the grid, naming it, once every other cell has finished (their outputs stay)."""

from __future__ import annotations

from gdig_core.config import GdigConfig
from tasks.runtime import artifacts
from tasks.runtime.devices import DevicePool, visible_gpus
from tasks.runtime.records import record
from tasks.sharding.mapping import gather, with_retries
from tasks.stages.cell_dispatch import dispatch_cell_task
from tasks.stages.cells import Cell, CellResult, Model, cell_id, finished_cell, relabel
from tasks.stages.local_cells import cell_task

LABEL = "downstream"


class CellsFailed(RuntimeError):
    """Raised after the grid finished with failed cells; names each one and its error."""


def local_parallelism(cfg: GdigConfig) -> int:
    """Cells that run at once in local mode: one per visible GPU, one on a CPU."""
    return max(1, visible_gpus(cfg.model.device))


def run_grid(cfg: GdigConfig, run_dir: str, base: Model, cells: list[Cell]) -> list[CellResult]:
    """Every cell's outputs, in the order of ``cells``. Submits the cells still to do as tasks of
    the calling flow's task runner (the pipeline sizes it: ``local_parallelism`` or
    ``orchestration.max_workers`` dispatched cells in flight)."""
    orch = cfg.orchestration
    log = artifacts.logger()
    ids = [cell_id(cfg, base, c) for c in cells]
    unique: dict[str, Cell] = {}
    for cid, cell in zip(ids, cells, strict=True):
        unique.setdefault(cid, cell)  # the first cell of each id runs it
    done: dict[str, CellResult] = {}
    todo: list[tuple[str, Cell]] = []
    for cid, cell in unique.items():
        found = finished_cell(cfg, run_dir, base, cell)
        if found.complete(cfg, cell):
            done[cid] = found
            record("cell_skipped", LABEL, cell=cell.label)
        else:
            todo.append((cid, cell))
    total = len(unique)
    gpus = local_parallelism(cfg)
    where = (f"on deployment {orch.downstream_deployment}" if orch.downstream_mode == "deployment"
             else f"here, {gpus} at a time" if gpus > 1 else "here, one at a time")
    log.info("%s: %d cells, %d already done, %d to run %s", LABEL, total, total - len(todo), len(todo), where)
    progress_id = artifacts.progress(artifacts.artifact_key(LABEL, "progress"), (total - len(todo)) / max(total, 1),
                                     f"{LABEL}: {total - len(todo)}/{total} cells finished")
    if orch.downstream_mode == "deployment":
        runner, extra = with_retries(dispatch_cell_task, orch), ()
    else:
        runner, extra = with_retries(cell_task, orch), ((DevicePool(gpus),) if gpus > 1 else ())
    futures = {runner.with_options(task_run_name="cell-" + cell.label.replace("/", "-"))
               .submit(cfg, run_dir, base, cell, *extra): (cid, cell) for cid, cell in todo}
    results, failures = gather(LABEL, "cell", futures, lambda job: job[1].label, total, progress_id)
    if failures:
        detail = "; ".join(f"cell {cell.label}: {type(err).__name__}: {err}" for (_, cell), err in failures)
        raise CellsFailed(f"{LABEL}: {len(failures)} of {total} cells failed after retries: {detail}")
    done |= {cid: results[cell.label] for cid, cell in todo}
    return [relabel(done[cid], cell) for cid, cell in zip(ids, cells, strict=True)]
