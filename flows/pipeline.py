"""The whole G-DIG pipeline as one Prefect flow with one subflow per stage.

data -> base/reference model -> (QE at the base model) -> curvature -> seed preconditioning ->
sharded scoring -> selection (every method and budget) -> downstream cells (a finetune per selection and
seed, then its evaluation) -> report.

Every stage is cached across flow runs by content (see ``tasks.caching.stage_cache``): a rerun with one
changed setting recomputes only what depends on it. The flow's parameter is the pydantic
``GdigConfig``, so the Prefect UI shows it as a form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from gdig_core.config import GdigConfig, MethodSpec
from tasks.caching.stage_cache import StageOutput
from tasks.runtime import artifacts
from tasks.runtime.records import start_records
from tasks.stages.cells import CellResult, plan_cells
from tasks.stages.data import base_model_task, prepare_data_task, reference_task
from tasks.stages.downstream import select_task
from tasks.stages.grid import local_parallelism, run_grid
from tasks.stages.influence import curvature_stage, precondition_task
from tasks.stages.pins import pins_of
from tasks.stages.publish import publish_outputs
from tasks.stages.qe import qe_task
from tasks.stages.report import report_task
from tasks.stages.run_start import begin_run
from tasks.stages.scoring import scoring_stage

Model = tuple[str, str]  # (path or hub id, content fingerprint)


def _runner(cfg: GdigConfig) -> ThreadPoolTaskRunner:
    # Unbounded by default in Prefect 3: bound it by the configured worker count.
    return ThreadPoolTaskRunner(max_workers=cfg.orchestration.max_workers)


@flow(name="data", persist_result=False)
def data_flow(config: GdigConfig, run_dir: str) -> StageOutput:
    # submit().result() unwraps the "Cached" state a task reports on a cache hit.
    return prepare_data_task.submit(config, run_dir).result()


@flow(name="models", persist_result=False)
def model_flow(config: GdigConfig, run_dir: str, data: StageOutput) -> tuple[Model, Model]:
    """The base model (built when tiny) and the reference model finetuned from it on the pool."""
    base = base_model_task.submit(config, run_dir, data).result()
    return base, reference_task.submit(config, run_dir, data, base).result()


@flow(name="qe", persist_result=False)
def qe_flow(config: GdigConfig, run_dir: str, data: StageOutput, base: Model) -> StageOutput:
    """The base model's dual cross-entropy QE of every pool pair (gdig_core.filters.qe)."""
    return qe_task.submit(config, run_dir, data, tuple(base)).result()


@flow(name="curvature", persist_result=False)
def curvature_flow(
    config: GdigConfig, run_dir: str, data: StageOutput, reference: Model, model_label: str = "reference"
) -> StageOutput:
    return curvature_stage(config, run_dir, data, tuple(reference), model_label)


@flow(name="precondition", persist_result=False)
def precondition_flow(
    config: GdigConfig, run_dir: str, data: StageOutput, reference: Model, factors: StageOutput,
    model_label: str = "reference",
) -> StageOutput:
    return precondition_task.submit(config, run_dir, data, tuple(reference), factors, model_label).result()


@flow(name="scoring", persist_result=False)
def scoring_flow(
    config: GdigConfig, run_dir: str, data: StageOutput, reference: Model, factors: StageOutput, precond: StageOutput,
    model_label: str = "reference",
) -> StageOutput:
    return scoring_stage(config, run_dir, data, tuple(reference), factors, precond, model_label)


def scoring_models(cfg: GdigConfig, base: Model, reference: Model) -> dict[str, Model]:
    """The models the pool is scored at, by label (``reference`` is the base model itself when
    reference training is off)."""
    return {label: (reference if label == "reference" else base) for label in cfg.scoring.models}


def _plan(cfg: GdigConfig) -> list[tuple[MethodSpec, int]]:
    """(method, budget) pairs; a ``full`` method ignores the budget, so it runs once."""
    from gdig_core.selection import selection_plan

    return selection_plan(cfg.selection)


@flow(name="selection", persist_result=False)
def selection_flow(
    config: GdigConfig, run_dir: str, data: StageOutput, scores: dict[str, StageOutput], qe: StageOutput | None = None
) -> list[StageOutput]:
    default = config.scoring.models[0]
    futures = [select_task.submit(config, run_dir, data, scores[spec.model or default], spec, b, qe)
               for spec, b in _plan(config)]
    results = [f.result() for f in futures]
    artifacts.table(artifacts.artifact_key("selection-summary"), [
        {"method": r.summary["method"], "model": r.summary.get("model"), "budget": r.summary["budget"],
         "size": r.summary["size"], "clean_share": (r.summary.get("noise") or {}).get("clean_share"),
         "shortfall": r.summary.get("shortfall"), "cached": r.cached} for r in results
    ], "Selections: sizes, clean shares and shortfalls per method and budget")
    return results


@flow(name="downstream", persist_result=False)
def downstream_flow(config: GdigConfig, run_dir: str, base: Model, selections: list[StageOutput]) -> list[CellResult]:
    """The grid of cells (a finetune on one selection with one seed, then its evaluation; and the
    zero-shot evaluation): here, on this machine's GPUs, or as flow runs of the downstream
    deployment (``orchestration.downstream_mode``)."""
    from gdig_core.report.writer import metric_table

    results = run_grid(config, run_dir, tuple(base), plan_cells(config, selections))
    models = [r.model for r in results if r.model is not None]
    artifacts.table(artifacts.artifact_key("finetune-summary"), [
        {k: m.summary.get(k) for k in ("method", "budget", "size", "seed")} | {"cached": m.cached} for m in models
    ], "Downstream finetunes (from the base model) per selection and seed")
    artifacts.table(artifacts.artifact_key("evaluation-summary"), [
        {"model": r.label, "ran_in": r.ran_in,
         **{f"{t}/{m}": v for t, ms in metric_table(r.evaluation.summary.get("metrics", {})).items()
            for m, v in ms.items()}, "cached": r.evaluation.cached}
        for r in results if r.evaluation is not None
    ], "Evaluation per model and test set")
    return results


def _downstream_runner(cfg: GdigConfig) -> ThreadPoolTaskRunner:
    # Deployment mode: dispatched cells in flight, as for shards. Local: one cell per GPU (each
    # in a process pinned to it), else one at a time: on 2 CPU cores, two cells at once in their
    # own processes were no faster than the in-process serial grid (BENCHMARKS.md).
    if cfg.orchestration.downstream_mode == "deployment":
        return _runner(cfg)
    return ThreadPoolTaskRunner(max_workers=local_parallelism(cfg))


@flow(name="report", persist_result=False)
def report_flow(
    config: GdigConfig, run_dir: str, data: StageOutput, scores: dict[str, StageOutput],
    selections: list[StageOutput], evaluations: list[StageOutput], stages: list[StageOutput], command: str | None = None,
    qe: StageOutput | None = None, cells: list[CellResult] | None = None,
) -> StageOutput:
    return report_task.submit(config, run_dir, data, scores, selections, evaluations, stages, command, qe,
                              cells).result()


@flow(name="gdig-pipeline", persist_result=False, log_prints=True)
def gdig_pipeline(config: GdigConfig = GdigConfig(), command: str | None = None) -> dict[str, Any]:  # noqa: B008 - a default form in the UI
    """Run every stage; return where the report, selections, scores and records are. ``command``
    (the CLI passes its own) is quoted in the report."""
    log = get_run_logger()
    cfg = config
    run_dir = str(Path(cfg.orchestration.run_dir).resolve())
    begin_run(cfg, run_dir)  # run lock, leftovers swept, up-front checks, GPU limit, shard deployment
    records = start_records(run_dir, str(flow_run.get_id() or "local"))
    log.info("run directory %s; records %s", run_dir, records)
    opts = {"task_runner": _runner(cfg)}

    data = data_flow.with_options(**opts)(cfg, run_dir)
    base, reference = model_flow.with_options(**opts)(cfg, run_dir, data)
    stages: list[StageOutput] = [data]
    qe = qe_flow.with_options(**opts)(cfg, run_dir, data, base) if cfg.qe_on else None
    if qe is not None:
        stages.append(qe)
    scores: dict[str, StageOutput] = {}
    factor_sets: dict[str, StageOutput] = {}
    for label, model in scoring_models(cfg, base, reference).items():
        factors = factor_sets[label] = curvature_flow.with_options(**opts)(cfg, run_dir, data, model, label)
        precond = precondition_flow.with_options(**opts)(cfg, run_dir, data, model, factors, label)
        scores[label] = scoring_flow.with_options(**opts)(cfg, run_dir, data, model, factors, precond, label)
        stages += [factors, precond, scores[label]]
    selections = selection_flow.with_options(**opts)(cfg, run_dir, data, scores, qe)
    cells: list[CellResult] = []
    if cfg.finetune.enabled or cfg.evaluation.enabled:
        cells = downstream_flow.with_options(task_runner=_downstream_runner(cfg))(cfg, run_dir, base, selections)
    models = [c.model for c in cells if c.model is not None]
    evaluations = [c.evaluation for c in cells if c.evaluation is not None]
    stages += [*selections, *models, *evaluations]
    report = report_flow.with_options(**opts)(cfg, run_dir, data, scores, selections, evaluations, stages, command,
                                              qe, cells)
    primary = scores[cfg.scoring.models[0]]
    outputs = publish_outputs(run_dir, data, primary, selections, report, records,
                              pins=pins_of(cfg, tuple(reference), factor_sets))
    # On the pipeline run itself, so its Artifacts tab shows the result without opening subflows.
    text = Path(outputs["report"]).read_text(encoding="utf-8")
    # The UI cannot load a relative image; point at the file instead.
    text = text.replace("![comparison](report.png)", f"Plot: `{outputs['report_png']}`")
    text += f"\n\nReport: `{outputs['report']}`; selected data under `{run_dir}/selection/`.\n"
    artifacts.markdown(artifacts.artifact_key("gdig-report"), text, f"G-DIG comparison report ({cfg.name})")
    artifacts.table(artifacts.artifact_key("gdig-comparison"), report.summary.get("rows", []),
                    "Comparison per method and budget (metrics averaged over finetune seeds)")
    log.info("report: %s", outputs["report"])
    return outputs
