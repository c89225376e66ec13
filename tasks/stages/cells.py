"""The downstream grid as cells: a cell is one finetune of the base model on one selection with
one seed, then the evaluation of that model (the zero-shot cell evaluates the base model alone).

A cell's outputs are the finetune and evaluation stage outputs, under the same keys wherever the
cell runs (``tasks.stages.downstream``), so a local run and a dispatched one share them. This
module plans the cells, finds a cell's verified outputs without running anything, and runs a
cell in this process; ``tasks.stages.local_cells`` runs the grid on this machine and
``tasks.stages.cell_dispatch`` on the downstream deployment."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gdig_core.config import GdigConfig
from gdig_core.io import text_sha256
from tasks.caching.stage_cache import StageOutput, lookup
from tasks.runtime.gpu_slots import gpu_slot
from tasks.stages.downstream import (
    SELECTION_KEYS,
    evaluate_stage,
    evaluation_key,
    finetune_key,
    finetune_label,
    finetune_stage,
)

Model = tuple[str, str]  # (path or hub id, content fingerprint)
ZERO_SHOT_META: dict[str, Any] = {"method": "zero-shot", "budget": 0, "size": 0, "seed": None}


class Cell(BaseModel):
    """One cell: a selection and a finetuning seed, or neither (zero-shot)."""

    label: str  # gdig/b200/s0, zero-shot
    selection: StageOutput | None = None
    seed: int | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """The labels its outputs carry: the selection's method, budget, size and the seed."""
        if self.selection is None:
            return dict(ZERO_SHOT_META)
        return {k: self.selection.summary.get(k) for k in SELECTION_KEYS} | {"seed": self.seed}


class CellResult(BaseModel):
    """A cell's verified outputs, labelled as the cell (two cells that selected the same pairs
    share one computation and keep their own labels)."""

    label: str
    model: StageOutput | None = None
    evaluation: StageOutput | None = None

    def complete(self, cfg: GdigConfig, cell: Cell) -> bool:
        return ((cell.selection is None or self.model is not None)
                and (not cfg.evaluation.enabled or self.evaluation is not None))

    @property
    def ran_in(self) -> str | None:
        """The flow run that computed the cell (its finetune, else its evaluation)."""
        for out in (self.model, self.evaluation):
            if out is not None and out.summary.get("ran_in"):
                return str(out.summary["ran_in"])
        return None


def finetune_seeds(cfg: GdigConfig, method: str) -> list[int]:
    """The finetuning seeds of a selection: its method's own, else finetune.seeds."""
    spec = next((m for m in cfg.selection.methods if m.name == method), None)
    return spec.finetune_seeds if spec is not None and spec.finetune_seeds else cfg.finetune.seeds


def plan_cells(cfg: GdigConfig, selections: list[StageOutput]) -> list[Cell]:
    """Every cell of the grid: zero-shot first (when evaluated), then each selection with each
    of its finetuning seeds, in selection order."""
    cells: list[Cell] = []
    if cfg.evaluation.enabled and cfg.evaluation.zero_shot:
        cells.append(Cell(label="zero-shot"))
    if cfg.finetune.enabled:
        for s in selections:
            m = s.summary
            cells += [Cell(label=f"{m['method']}/b{m['budget']}/s{seed}", selection=s, seed=seed)
                      for seed in finetune_seeds(cfg, m["method"])]
    return cells


def _evaluation_part(cfg: GdigConfig) -> str:
    # The evaluation key with the model left open: it covers the test sets, config and code.
    return evaluation_key(cfg, "<model>") if cfg.evaluation.enabled else "none"


def cell_id(cfg: GdigConfig, base: Model, cell: Cell) -> str:
    """What a cell computes: its finetune key (or the evaluated base model) and its evaluation.
    Cells with one id are one computation; it names the cell's files on shared storage."""
    trained = finetune_key(cfg, base, cell.selection, cell.seed) if cell.selection is not None else f"base:{base[1]}"
    return text_sha256(trained, _evaluation_part(cfg))


def _labelled(out: StageOutput, meta: dict[str, Any], label: str) -> StageOutput:
    return out.model_copy(update={"summary": out.summary | meta, "label": label})


def _evaluation_meta(model: StageOutput | None, cell: Cell) -> dict[str, Any]:
    if model is None:
        return cell.meta
    return {k: v for k, v in model.summary.items() if k != "ran_in"}


def finished_cell(cfg: GdigConfig, run_dir: str, base: Model, cell: Cell) -> CellResult:
    """The cell's outputs already in the run directory's cache, verified; missing parts are None
    (nothing is computed). A cell whose finetune is there but not its evaluation has only
    ``model``."""
    result = CellResult(label=cell.label)
    if cell.selection is not None:
        label = finetune_label(cell.selection, cell.seed)
        hit = lookup(run_dir, "finetune", finetune_key(cfg, base, cell.selection, cell.seed), label)
        if hit is None:
            return result
        result.model = _labelled(hit, cell.meta, label)
    if cfg.evaluation.enabled:
        digest = result.model.digest("model") if result.model is not None else base[1]
        hit = lookup(run_dir, "evaluation", evaluation_key(cfg, digest), f"evaluation/{cell.label}")
        if hit is not None:
            result.evaluation = _labelled(hit, _evaluation_meta(result.model, cell), f"evaluation/{cell.label}")
    return result


def run_cell(cfg: GdigConfig, run_dir: str, base: Model, cell: Cell) -> CellResult:
    """The cell in this process: its finetune, then its evaluation, each from the cache when
    there, holding one slot of the GPU limit while anything is computed."""
    done = finished_cell(cfg, run_dir, base, cell)
    if done.complete(cfg, cell):
        return done
    with gpu_slot(cfg.orchestration, f"cell {cell.label}"):
        model = finetune_stage(cfg, run_dir, base, cell.selection, cell.seed) if cell.selection is not None else None
        evaluation = None
        if cfg.evaluation.enabled:
            target = (str(model.path("model")), model.digest("model")) if model is not None else base
            evaluation = evaluate_stage(cfg, run_dir, target, cell.label, _evaluation_meta(model, cell))
    return CellResult(label=cell.label, model=model, evaluation=evaluation)


def relabel(result: CellResult, cell: Cell) -> CellResult:
    """One computation's outputs under another cell of the same id (same pairs, another method)."""
    if result.label == cell.label:
        return result
    model = _labelled(result.model, cell.meta, finetune_label(cell.selection, cell.seed)) if result.model else None
    evaluation = (_labelled(result.evaluation, _evaluation_meta(model, cell), f"evaluation/{cell.label}")
                  if result.evaluation else None)
    return CellResult(label=cell.label, model=model, evaluation=evaluation)
