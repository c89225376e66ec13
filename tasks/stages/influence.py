"""Curvature and seed preconditioning stages (scoring: tasks.stages.scoring). The sharded curvature
stage runs as flow-level code (it submits shard tasks); merging, eigendecomposition and
preconditioning are tasks. Factors can be pinned from an earlier run (tasks.stages.pins)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from gdig_core.config import GdigConfig
from tasks.caching.stage_cache import StageOutput, run_stage
from tasks.caching.stage_keys import key_parts, stage_calls
from tasks.runtime import artifacts
from tasks.runtime.gpu_slots import gpu_slot
from tasks.runtime.records import record
from tasks.sharding.influence_calls import precondition_call
from tasks.sharding.jobs import (
    ShardJob,
    ShardKind,
    local_copies,
    plan,
    shard_output,
    shard_root,
    stage_inputs,
)
from tasks.sharding.mapping import map_shards
from tasks.sharding.model_cache import loaded_model
from tasks.stages.common import TASK_OPTS, pool_hash, seed_hash, stage_state
from tasks.stages.files import (
    factor_file,
    needed_methods,
    precond_file,
    projected_factor_file,
    scoring_factor_file,
)
from tasks.stages.pins import pinned_factors


def _jobs(
    cfg: GdigConfig, kind: ShardKind, n_rows: int, shard_size: int, root: str, key: str, inputs: dict[str, str]
) -> list[ShardJob]:
    config = cfg.model_dump(mode="json")
    return [
        ShardJob(kind=kind, stage_key=key, index=i, start=s, end=e, config=config, inputs=inputs,
                 output=shard_output(root, kind, i))
        for i, (s, e) in enumerate(plan(n_rows, shard_size))
    ]


@task(name="tracked-modules", **TASK_OPTS)
def tracked_modules_task(cfg: GdigConfig, checkpoint: str) -> dict[str, tuple[int, int]]:
    """The tracked layers, in order, with the (out, in) shape of their gradients."""
    from gdig_core.influence.hooks import layer_shape, select_tracked_modules

    model, _ = loaded_model(cfg, checkpoint)
    return {name: layer_shape(m) for name, m in select_tracked_modules(model, cfg.curvature).items()}


@task(name="eigendecompose", **TASK_OPTS)
def eigen_task(cfg: GdigConfig, stats_paths: list[Path], out_path: Path) -> dict[str, Any]:
    from gdig_core.influence.curvature import N_BAD, N_EXAMPLES, eigendecompose, merge_stats, save_stats

    merged = merge_stats(stats_paths)
    save_stats(eigendecompose(merged, cfg.curvature), out_path)
    return {"examples": int(merged[N_EXAMPLES].sum()), "bad_examples": int(merged[N_BAD].sum())}


def _curvature_passes(cfg: GdigConfig) -> tuple[bool, bool]:
    """(covariance pass, Lambda pass) that the configured score variants need."""
    from gdig_core.influence.preconditioners import required_passes
    from gdig_core.influence.variants import curvature_methods, score_variants

    return required_passes(curvature_methods(score_variants(cfg.curvature.method, cfg.scoring.variants)))


@task(name="finalize-factors", **TASK_OPTS)
def finalize_task(
    cfg: GdigConfig, shapes: dict[str, tuple[int, int]], eigen_path: Path | None, lambda_paths: list[Path], out: Path
) -> dict[str, Any]:
    """Every preconditioner the fitted statistics allow (identity always; K-FAC with the
    eigendecomposition; EK-FAC with the Lambda pass too), one file each: they cost nothing more.
    With the gradient store enabled, the same in its projected space (``projected-factors-*``)."""
    from gdig_core.influence.curvature import load_stats, merge_stats
    from gdig_core.influence.factors import finalize_factors, finalize_projected_factors, save_factors
    from gdig_core.influence.features import gradient_projection
    from gdig_core.influence.preconditioners import available

    modules = list(shapes)
    eigen = load_stats(eigen_path) if eigen_path is not None else None
    lam = merge_stats(lambda_paths) if lambda_paths else None
    methods = available(eigen is not None, lam is not None)
    projection = gradient_projection(shapes, cfg.scoring.store) if cfg.scoring.store.enabled else None
    damping = {}
    for method in methods:
        factors = finalize_factors(cfg.curvature, modules, eigen, lam, method=method)
        save_factors(factors, out / factor_file(method))
        damping[method] = factors.damping
        if projection is not None:
            save_factors(finalize_projected_factors(cfg.curvature, modules, projection, eigen, lam, method=method),
                         out / projected_factor_file(method))
    summary = {"method": cfg.curvature.method, "methods": methods, "layers": len(modules), "damping": damping}
    if projection is not None:
        summary["projection"] = {"dim_per_layer": projection.dim_per_layer, "total_dim": projection.total_dim}
    return summary


def curvature_stage(
    cfg: GdigConfig, run_dir: str, data: StageOutput, reference: tuple[str, str], model_label: str = "reference"
) -> StageOutput:
    """K-FAC/EK-FAC factors at a scoring model (the reference model, or the base model), both
    statistics passes sharded over the sample; one factor file per preconditioner."""
    from gdig_core.data.pairs import read_pairs, write_pairs

    orch = cfg.orchestration
    ccfg = cfg.curvature
    cov_pass, lambda_pass = _curvature_passes(cfg)
    calls = stage_calls("curvature", cfg)

    if label_pinned := cfg.pin.factors.get(model_label):
        result = pinned_factors(cfg, model_label, reference)
        record("pinned", f"curvature/{model_label}", key=result.key, dir=label_pinned.dir)
        return result

    def compute(out: Path, work: Path) -> dict[str, Any]:
        modules = tracked_modules_task(cfg, reference[0])
        if not cov_pass:
            return finalize_task(cfg, modules, None, [], out)
        table = read_pairs(data.path("pool.parquet"))
        table = table.take(calls["sample"](table.num_rows))
        sample_path = work / "curvature_sample.parquet"
        write_pairs(table, sample_path)
        from gdig_core.integrity import file_digest

        files = {"checkpoint": (Path(reference[0]), reference[1]), "table": (sample_path, file_digest(sample_path))}
        inputs = stage_inputs(cfg, files)
        jobs = _jobs(cfg, "curvature_stats", table.num_rows, ccfg.shard_size, shard_root(cfg, work, "a"), work.name, inputs)
        stats = map_shards("curvature/covariance", jobs, orch)
        eigen_path = work / "eigen.safetensors"
        summary = eigen_task(cfg, local_copies([j.output for j in jobs], work), eigen_path)
        lambda_paths: list[Path] = []
        if lambda_pass:
            inputs2 = {**inputs, **stage_inputs(cfg, {"eigen": (eigen_path, file_digest(eigen_path))})}
            jobs2 = _jobs(cfg, "lambda_stats", table.num_rows, ccfg.shard_size, shard_root(cfg, work, "lambda"), work.name, inputs2)
            map_shards("curvature/lambda", jobs2, orch)
            lambda_paths = local_copies([j.output for j in jobs2], work)
        summary |= finalize_task(cfg, modules, eigen_path, lambda_paths, out)
        return summary | {"shards": len(stats), "sample": table.num_rows}

    result = run_stage(
        run_dir, "curvature", {"pool": pool_hash(data), "reference": reference[1]},
        *key_parts(calls), compute, label=f"curvature/{model_label}",
    )
    s = result.summary
    artifacts.table(artifacts.artifact_key("curvature-summary", model_label), [
        {"model": model_label, "methods": s.get("methods"), "layers": s.get("layers"), "sample": s.get("sample"),
         "examples": s.get("examples"), "bad_examples": s.get("bad_examples"), "cached": result.cached}
    ], f"Curvature factors at the {model_label} model")
    return result


@task(name="precondition-seeds", **TASK_OPTS)
def precondition_task(
    cfg: GdigConfig, run_dir: str, data: StageOutput, reference: tuple[str, str], factors: StageOutput,
    model_label: str = "reference",
) -> StageOutput:
    """H^-1 grad of every seed example under each needed preconditioner, once (the seed set is small)."""
    methods = needed_methods(cfg)
    files = [scoring_factor_file(cfg, m) for m in methods]  # projected ones on the store path

    def compute(out: Path, work: Path) -> dict[str, Any]:
        with gpu_slot(cfg.orchestration, "seed preconditioning"):
            return precondition_call(cfg, reference[0], data.path("seed.parquet"),
                                     {m: factors.path(f) for m, f in zip(methods, files, strict=True)},
                                     {m: out / precond_file(m) for m in methods})

    result = run_stage(
        run_dir, "precondition",
        {"seed": seed_hash(data), "reference": reference[1], "factors": factors.digest(*files)},
        *key_parts(stage_calls("precondition", cfg)), compute, label=f"precondition/{model_label}",
    )
    return stage_state(result, result.cached, f"precondition/{model_label}")
