"""Curvature, seed preconditioning and scoring stages. The two sharded stages run as flow-level
code (they submit shard tasks); merging, eigendecomposition and preconditioning are tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from gdig_core.config import GdigConfig
from tasks import artifacts, storage
from tasks.common import gpu_slot, stage_state
from tasks.data_tasks import TASK_OPTS, pool_hash, sample_rows, seed_hash
from tasks.shard_map import map_shards
from tasks.shards import ShardJob, ShardKind, plan, shard_output
from tasks.stage_cache import StageOutput, link_or_copy, run_stage
from tasks.stage_keys import key_parts, stage_calls


def _shard_root(cfg: GdigConfig, work: Path, stage: str) -> str:
    """Shard outputs: the stage's work dir, or shared storage when workers run elsewhere."""
    if cfg.orchestration.shared_storage:
        return storage.join(cfg.orchestration.shared_storage, "shards", stage, work.name.removesuffix(".work"))
    root = work / "shards" / stage
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def _stage_inputs(cfg: GdigConfig, files: dict[str, tuple[Path, str]]) -> dict[str, str]:
    """Locations workers can read, by name (uploaded to shared storage when it is a URL)."""
    return {name: storage.stage_in(path, cfg.orchestration.shared_storage, digest) for name, (path, digest) in files.items()}


def _jobs(
    cfg: GdigConfig, kind: ShardKind, n_rows: int, shard_size: int, root: str, key: str, inputs: dict[str, str]
) -> list[ShardJob]:
    config = cfg.model_dump(mode="json")
    return [
        ShardJob(kind=kind, stage_key=key, index=i, start=s, end=e, config=config, inputs=inputs,
                 output=shard_output(root, kind, i))
        for i, (s, e) in enumerate(plan(n_rows, shard_size))
    ]


def _local_copies(locations: list[str], work: Path) -> list[Path]:
    return [storage.fetch(loc, work / "fetched") for loc in locations]


@task(name="tracked-modules", **TASK_OPTS)
def tracked_modules_task(cfg: GdigConfig, checkpoint: str) -> list[str]:
    from gdig_core.hooks import select_tracked_modules
    from tasks.shard_work import loaded_model

    model, _ = loaded_model(cfg, checkpoint)
    return list(select_tracked_modules(model, cfg.curvature))


@task(name="eigendecompose", **TASK_OPTS)
def eigen_task(cfg: GdigConfig, stats_paths: list[Path], out_path: Path) -> dict[str, Any]:
    from gdig_core.curvature import N_BAD, N_EXAMPLES, eigendecompose, merge_stats, save_stats

    merged = merge_stats(stats_paths)
    save_stats(eigendecompose(merged, cfg.curvature), out_path)
    return {"examples": int(merged[N_EXAMPLES].sum()), "bad_examples": int(merged[N_BAD].sum())}


def factor_file(method: str) -> str:
    """The curvature stage's output file for one preconditioner."""
    return f"factors-{method}.safetensors"


def precond_file(method: str) -> str:
    """The preconditioning stage's output file for one preconditioner."""
    return f"precond-{method}.safetensors"


def _curvature_passes(cfg: GdigConfig) -> tuple[bool, bool]:
    """(covariance pass, Lambda pass) that the configured score variants need."""
    from gdig_core.variants import curvature_methods, score_variants

    methods = curvature_methods(score_variants(cfg.curvature.method, cfg.scoring.variants))
    return any(m != "identity" for m in methods), "ekfac" in methods


def needed_methods(cfg: GdigConfig) -> list[str]:
    """The preconditioners the score variants read, primary first."""
    from gdig_core.variants import curvature_methods, score_variants

    return curvature_methods(score_variants(cfg.curvature.method, cfg.scoring.variants))


@task(name="finalize-factors", **TASK_OPTS)
def finalize_task(cfg: GdigConfig, modules: list[str], eigen_path: Path | None, lambda_paths: list[Path], out: Path) -> dict[str, Any]:
    """Every preconditioner the fitted statistics allow (identity always; K-FAC with the
    eigendecomposition; EK-FAC with the Lambda pass too), one file each: they cost nothing more."""
    from gdig_core.curvature import finalize_factors, load_stats, merge_stats, save_factors

    eigen = load_stats(eigen_path) if eigen_path is not None else None
    lam = merge_stats(lambda_paths) if lambda_paths else None
    methods = ["identity"] + (["kfac"] if eigen is not None else []) + (["ekfac"] if lam is not None else [])
    damping = {}
    for method in methods:
        factors = finalize_factors(cfg.curvature, modules, eigen, lam, method=method)
        save_factors(factors, out / factor_file(method))
        damping[method] = factors.damping
    return {"method": cfg.curvature.method, "methods": methods, "layers": len(modules), "damping": damping}


def curvature_stage(
    cfg: GdigConfig, run_dir: str, data: StageOutput, reference: tuple[str, str], model_label: str = "reference"
) -> StageOutput:
    """K-FAC/EK-FAC factors at a scoring model (the reference model, or the base model), both
    statistics passes sharded over the sample; one factor file per preconditioner."""
    from gdig_core.data import read_pairs, write_pairs

    orch = cfg.orchestration
    ccfg = cfg.curvature
    cov_pass, lambda_pass = _curvature_passes(cfg)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        modules = tracked_modules_task(cfg, reference[0])
        if not cov_pass:
            return finalize_task(cfg, modules, None, [], out)
        table = read_pairs(data.path("pool.parquet"))
        table = table.take(sample_rows(table.num_rows, ccfg.sample, ccfg.sampling_seed))
        sample_path = work / "curvature_sample.parquet"
        write_pairs(table, sample_path)
        from gdig_core.integrity import file_digest

        files = {"checkpoint": (Path(reference[0]), reference[1]), "table": (sample_path, file_digest(sample_path))}
        inputs = _stage_inputs(cfg, files)
        jobs = _jobs(cfg, "curvature_stats", table.num_rows, ccfg.shard_size, _shard_root(cfg, work, "a"), work.name, inputs)
        stats = map_shards("curvature/covariance", jobs, orch)
        eigen_path = work / "eigen.safetensors"
        summary = eigen_task(cfg, _local_copies([j.output for j in jobs], work), eigen_path)
        lambda_paths: list[Path] = []
        if lambda_pass:
            inputs2 = {**inputs, **_stage_inputs(cfg, {"eigen": (eigen_path, file_digest(eigen_path))})}
            jobs2 = _jobs(cfg, "lambda_stats", table.num_rows, ccfg.shard_size, _shard_root(cfg, work, "lambda"), work.name, inputs2)
            map_shards("curvature/lambda", jobs2, orch)
            lambda_paths = _local_copies([j.output for j in jobs2], work)
        summary |= finalize_task(cfg, modules, eigen_path, lambda_paths, out)
        return summary | {"shards": len(stats), "sample": table.num_rows}

    result = run_stage(
        run_dir, "curvature", {"pool": pool_hash(data), "reference": reference[1]},
        *key_parts(stage_calls("curvature", cfg)), compute, label=f"curvature/{model_label}",
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
    from tasks.influence_calls import precondition_call

    methods = needed_methods(cfg)
    files = [factor_file(m) for m in methods]

    def compute(out: Path, work: Path) -> dict[str, Any]:
        with gpu_slot(cfg, "seed preconditioning"):
            return precondition_call(cfg, reference[0], data.path("seed.parquet"),
                                     {m: factors.path(factor_file(m)) for m in methods},
                                     {m: out / precond_file(m) for m in methods})

    result = run_stage(
        run_dir, "precondition",
        {"seed": seed_hash(data), "reference": reference[1], "factors": factors.digest(*files)},
        *key_parts(stage_calls("precondition", cfg)), compute, label=f"precondition/{model_label}",
    )
    return stage_state(result, result.cached, f"precondition/{model_label}")


def scoring_stage(
    cfg: GdigConfig, run_dir: str, data: StageOutput, reference: tuple[str, str], factors: StageOutput, precond: StageOutput,
    model_label: str = "reference",
) -> StageOutput:
    """Benefit of every pool candidate on every seed, sharded; ``scores/shard-*.parquet``, with
    summary columns for every configured score variant."""
    from gdig_core.scores import read_scores

    orch = cfg.orchestration
    methods = needed_methods(cfg)
    primary = factor_file(cfg.curvature.method)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        files = {
            "checkpoint": (Path(reference[0]), reference[1]),
            "table": (data.path("pool.parquet"), pool_hash(data)),
            "factors": (factors.path(primary), factors.digest(primary)),
            **{f"precond:{m}": (precond.path(precond_file(m)), precond.digest(precond_file(m))) for m in methods},
        }
        n_rows = data.summary["pool"]["rows_kept"]
        jobs = _jobs(cfg, "scores", n_rows, cfg.scoring.shard_size, _shard_root(cfg, work, "scores"), work.name,
                     _stage_inputs(cfg, files))
        map_shards("scoring", jobs, orch)
        for src in _local_copies([j.output for j in jobs], work):
            link_or_copy(src, out / "scores" / src.name)
        table = read_scores(sorted((out / "scores").glob("*.parquet")))
        return {"shards": len(jobs), "candidates": len(table), "ok": int(table.ok.sum()), "model": model_label,
                "variants": list(table.variants), "benefit_mean": float(table.benefit_mean[table.ok].mean()) if table.ok.any() else None}

    result = run_stage(
        run_dir, "scoring",
        {"pool": pool_hash(data), "reference": reference[1], "factors": factors.digest(primary),
         "precond": precond.digest(*(precond_file(m) for m in methods))},
        *key_parts(stage_calls("scoring", cfg)), compute, label=f"scoring/{model_label}",
    )
    artifacts.table(artifacts.artifact_key("scoring-summary", model_label), [result.summary | {"cached": result.cached}],
                    f"Candidate scoring at the {model_label} model")
    return result
