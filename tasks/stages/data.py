"""Stage tasks for the inputs: data preparation, the base model, the reference model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task

from gdig_core.config import GdigConfig, resolve_data_path
from tasks.caching.stage_cache import StageOutput, run_stage
from tasks.caching.stage_keys import key_parts, stage_calls
from tasks.runtime import artifacts
from tasks.runtime.faults import kill_point
from tasks.runtime.gpu_slots import gpu_slot
from tasks.runtime.records import record
from tasks.stages.common import TASK_OPTS, model_fingerprint, pool_hash, raw_file_hashes, stage_state
from tasks.stages.pins import pinned_reference


def _raw_inputs(cfg: GdigConfig) -> dict[str, str]:
    d = cfg.data
    paths: dict[str, Path | None] = {
        "pool": resolve_data_path(d, d.pool.path),
        "pool_tgt": resolve_data_path(d, d.pool.tgt_path) if d.pool.tgt_path else None,
        "seed": resolve_data_path(d, d.seed.path),
        "seed_tgt": resolve_data_path(d, d.seed.tgt_path) if d.seed.tgt_path else None,
    }
    return raw_file_hashes(paths)


@task(name="prepare-data", **TASK_OPTS)
def prepare_data_task(cfg: GdigConfig, run_dir: str) -> StageOutput:
    """Read, validate, dedup and sample the pool and seed into Parquet (content hashes in the summary)."""
    calls = stage_calls("data", cfg)

    noise = cfg.data.noise

    def compute(out: Path, work: Path) -> dict[str, Any]:
        translator = calls["weak_mt"]() if "weak_mt" in calls else None
        return calls["prepare"](out_dir=out, weak_translator=translator)

    inputs = _raw_inputs(cfg)
    if noise is not None and noise.third_language is not None:
        third = noise.third_language
        inputs |= raw_file_hashes({"third_language": resolve_data_path(cfg.data, third.path),
                                   "third_language_tgt": resolve_data_path(cfg.data, third.tgt_path) if third.tgt_path else None})
    if "weak_mt" in calls:  # the weak system's weights decide the low_quality_mt targets
        from gdig_core.training.models import model_path

        inputs["weak_mt"] = model_fingerprint(model_path(calls["weak_mt"].kwargs["model_cfg"]))
    # data_summary.json names the files read by absolute path: not part of the content.
    result = run_stage(run_dir, "data", inputs, *key_parts(calls), compute, volatile=["data_summary.json"])
    summary = result.summary
    artifacts.table(
        artifacts.artifact_key("data-summary"),
        [
            {"set": role, **{k: summary[role].get(k) for k in ("rows_read", "rows_kept", "duplicates_removed", "quarantined")}}
            for role in ("pool", "seed") if role in summary
        ],
        "Data preparation: rows read, kept, removed",
    )
    return stage_state(result, result.cached, "data")


@task(name="base-model", **TASK_OPTS)
def base_model_task(cfg: GdigConfig, run_dir: str, data: StageOutput) -> tuple[str, str]:
    """``(path or hub id, fingerprint)`` of the base model; the tiny model is built from the pool."""
    if cfg.model.name != "tiny":
        from gdig_core.training.models import model_path

        path = model_path(cfg.model)
        return path, model_fingerprint(path)
    from gdig_core.data.pairs import read_pairs

    calls = stage_calls("base-model", cfg)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        table = read_pairs(data.path("pool.parquet"))
        n = calls["build"].kwargs["cfg"].tokenizer_texts
        texts = table.column("src").to_pylist()[:n] + table.column("tgt").to_pylist()[:n]
        calls["build"](texts=texts, out_dir=out / "model")
        return {"texts": len(texts)}

    result = run_stage(run_dir, "base-model", {"pool": pool_hash(data)}, *key_parts(calls), compute)
    return stage_state((str(result.path("model")), result.digest("model")), result.cached, "base model")


@task(name="reference-model", **TASK_OPTS)
def reference_task(cfg: GdigConfig, run_dir: str, data: StageOutput, base: tuple[str, str]) -> tuple[str, str]:
    """Finetune the base model on (a sample of) the pool: the model all gradients are taken at."""
    if not cfg.reference.enabled:
        return base
    if cfg.pin.reference is not None:  # verified when the run began (tasks.stages.pins.check_pins)
        model = pinned_reference(cfg)
        record("pinned", "reference", dir=cfg.pin.reference.dir, hash=model[1])
        return model
    from gdig_core.data.pairs import read_pairs

    calls = stage_calls("reference", cfg)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        table = read_pairs(data.path("pool.parquet"))
        table = table.take(calls["sample"](table.num_rows))
        # Train into the work dir so resume checkpoints survive a killed run, then move in place.
        with gpu_slot(cfg.orchestration, "reference model"):
            model_dir = calls["train"](pairs=table, out_dir=work / "model", base_model=base[0], progress=False,
                                       on_step=lambda step, loss: kill_point("reference", step))
        shutil.move(str(model_dir), out / "model")
        return {"pairs": table.num_rows}

    result = run_stage(run_dir, "reference", {"pool": pool_hash(data), "base": base[1]}, *key_parts(calls),
                       compute, volatile=["model/training_summary.json"])
    return stage_state((str(result.path("model")), result.digest("model")), result.cached, "reference model")
