"""Stage tasks after scoring: selection per method and budget, downstream finetunes, evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task

from gdig_core.config import GdigConfig, MethodSpec
from gdig_core.selection.layout import selection_subdir
from tasks.caching.stage_cache import StageOutput, key_of, run_stage
from tasks.caching.stage_keys import key_parts, stage_calls
from tasks.runtime.faults import kill_point
from tasks.runtime.gpu_slots import gpu_slot
from tasks.stages.common import TASK_OPTS, pool_hash, raw_file_hashes, stage_state
from tasks.stages.qe import qe_scores

#: What a finetune and its evaluation carry from the selection they came from (report labels).
SELECTION_KEYS = ("method", "kind", "model", "budget", "size")


def selection_label(method: str, budget: int, kind: str | None = None) -> str:
    return "selection/" + selection_subdir(method, budget, kind)


def noise_labels(data: StageOutput) -> dict[str, str] | None:
    """id -> noise label when the pool carries labels (data.noise or a corrupted pool file)."""
    path = data.path("noise_labels.parquet")
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return dict(zip(table.column("id").to_pylist(), table.column("noise").to_pylist(), strict=True))


@task(name="select", **TASK_OPTS)
def select_task(
    cfg: GdigConfig, run_dir: str, data: StageOutput, scores: StageOutput, spec: MethodSpec, budget: int,
    qe: StageOutput | None = None,
) -> StageOutput:
    """One method at one budget: ``selected.parquet``/``.jsonl``, ``candidates.parquet``, ``summary.json``."""
    from gdig_core.data.pairs import read_pairs
    from gdig_core.influence.scores import read_scores
    from gdig_core.selection import select

    def compute(out: Path, work: Path) -> dict[str, Any]:
        shard_paths = sorted(Path(scores.dir).glob("scores/*.parquet"))
        result = select(read_scores(shard_paths), read_pairs(data.path("pool.parquet")), cfg.selection, spec, budget,
                        out, labels=noise_labels(data), tgt_lang=cfg.data.tgt_lang, qe=qe_scores(qe))
        return {"method": spec.name, "kind": spec.method, "model": scores.summary.get("model"), "budget": budget,
                "size": result.size, "shortfall": result.shortfall["message"] if result.shortfall else None,
                "noise": result.summary.get("noise"), "length_profile": result.summary.get("length_profile"),
                "prefilter": list(spec.prefilter)}

    label = selection_label(spec.name, budget, spec.method)
    inputs = {"scores": scores.digest("scores"), "pool": pool_hash(data)}
    if data.path("noise_labels.parquet").exists():
        inputs["labels"] = data.digest("noise_labels.parquet")
    if qe is not None:
        inputs["qe"] = qe.digest()
    result = run_stage(
        run_dir, "selection", inputs, *key_parts(stage_calls("selection", cfg, method=spec, budget=budget)),
        compute, label=label,
    )
    return stage_state(result, result.cached, label)


def finetune_label(selection: StageOutput, seed: int) -> str:
    """``finetune/<method>/b<budget>/s<seed>``: what records and the report call one finetune."""
    s = selection.summary
    return selection_label(s["method"], s["budget"], s.get("kind")).replace("selection", "finetune", 1) + f"/s{seed}"


def _finetune_inputs(base: tuple[str, str], selection: StageOutput) -> dict[str, str]:
    return {"base": base[1], "train_pairs": selection.digest("selected.parquet")}


def finetune_key(cfg: GdigConfig, base: tuple[str, str], selection: StageOutput, seed: int) -> str:
    """The finetune stage's key for this selection and seed, as ``finetune_stage`` computes it."""
    return key_of("finetune", _finetune_inputs(base, selection), *key_parts(stage_calls("finetune", cfg, seed=seed)))


def finetune_stage(
    cfg: GdigConfig, run_dir: str, base: tuple[str, str], selection: StageOutput, seed: int
) -> StageOutput:
    """Finetune the base model (not the reference model) on one selection: its verified cached
    output, or computed now (resuming from the last checkpoint of a killed try)."""
    from gdig_core.data.pairs import read_pairs

    calls = stage_calls("finetune", cfg, seed=seed)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        table = read_pairs(selection.path("selected.parquet"))
        with gpu_slot(cfg.orchestration, "finetune"):
            model_dir = calls["train"](pairs=table, out_dir=work / "model", base_model=base[0], progress=False,
                                       on_step=lambda step, loss: kill_point("finetune", step))
        shutil.move(str(model_dir), out / "model")
        return {**{k: selection.summary.get(k) for k in SELECTION_KEYS}, "seed": seed, **ran_in()}

    label = finetune_label(selection, seed)
    result = run_stage(
        run_dir, "finetune", _finetune_inputs(base, selection), *key_parts(calls), compute, label=label,
        volatile=["model/training_summary.json"],
    )
    # Two methods that selected the same pairs share one cached model; the caller's labels win.
    meta = {k: selection.summary.get(k) for k in SELECTION_KEYS} | {"seed": seed}
    return result.model_copy(update={"summary": result.summary | meta, "label": label})


@task(name="finetune", **TASK_OPTS)
def finetune_task(
    cfg: GdigConfig, run_dir: str, base: tuple[str, str], selection: StageOutput, seed: int
) -> StageOutput:
    """``finetune_stage`` as a task of its own."""
    result = finetune_stage(cfg, run_dir, base, selection, seed)
    return stage_state(result, result.cached, result.label or "finetune")


#: Set in a child process that runs a cell for the pipeline (``tasks.stages.local_cells``): what
#: ``ran_in`` says there, outside any Prefect run.
RAN_IN_ENV = "GDIG_RAN_IN"


def ran_in() -> dict[str, str]:
    """``{"ran_in": where}``: the flow run (and task run) that computes this, for the report's
    table of cells: a dispatched cell's own flow run, or the pipeline's ``downstream`` run and
    the cell's task run. Empty outside a Prefect run."""
    import os

    from prefect.context import FlowRunContext, TaskRunContext

    if os.environ.get(RAN_IN_ENV):
        return {"ran_in": os.environ[RAN_IN_ENV]}
    flow_ctx, task_ctx = FlowRunContext.get(), TaskRunContext.get()
    parts = [flow_ctx.flow_run.name] if flow_ctx is not None and flow_ctx.flow_run is not None else []
    if task_ctx is not None:
        parts.append(task_ctx.task_run.name)
    return {"ran_in": "/".join(parts)} if parts else {}


def _test_set_hashes(cfg: GdigConfig) -> dict[str, str]:
    return raw_file_hashes(test_set_paths(cfg))


def test_set_paths(cfg: GdigConfig) -> dict[str, Path | None]:
    """Every raw file (or dataset directory) the evaluation reads, by the name its hash has in the key."""
    from gdig_core.config import resolve_data_path

    paths: dict[str, Path | None] = {}
    for ts in cfg.evaluation.test_sets:
        paths[ts.name] = resolve_data_path(cfg.data, ts.path)
        paths[ts.name + "_tgt"] = resolve_data_path(cfg.data, ts.tgt_path) if ts.tgt_path else None
    return paths


def _evaluation_inputs(cfg: GdigConfig, model_digest: str) -> dict[str, str]:
    return {"model": model_digest, **_test_set_hashes(cfg)}


def evaluation_key(cfg: GdigConfig, model_digest: str) -> str:
    """The evaluation stage's key for the model with this digest, as ``evaluate_stage`` computes it."""
    return key_of("evaluation", _evaluation_inputs(cfg, model_digest), *key_parts(stage_calls("evaluation", cfg)))


def evaluate_stage(cfg: GdigConfig, run_dir: str, model: tuple[str, str], label: str, meta: dict[str, Any]) -> StageOutput:
    """BLEU/chrF (and COMET when available) of one model on every test set; ``metrics.json``."""
    calls = stage_calls("evaluation", cfg)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        with gpu_slot(cfg.orchestration, f"evaluation {label}"):
            metrics = calls["evaluate"](model_dir=model[0], out_dir=out)
        kill_point("evaluation")
        return {**meta, "metrics": metrics, **ran_in()}

    # Timings and the model's path are in results.json and metrics.json; the hypotheses are not.
    result = run_stage(
        run_dir, "evaluation", _evaluation_inputs(cfg, model[1]), *key_parts(calls),
        compute, label=f"evaluation/{label}", volatile=["results.json", "*/metrics.json"],
    )
    # Identical models (same selected pairs) share one cached evaluation; keep this model's labels.
    return result.model_copy(update={"summary": result.summary | meta, "label": f"evaluation/{label}"})


@task(name="evaluate", **TASK_OPTS)
def evaluate_task(cfg: GdigConfig, run_dir: str, model: tuple[str, str], label: str, meta: dict[str, Any]) -> StageOutput:
    """``evaluate_stage`` as a task of its own."""
    result = evaluate_stage(cfg, run_dir, model, label, meta)
    return stage_state(result, result.cached, f"evaluation/{label}")
