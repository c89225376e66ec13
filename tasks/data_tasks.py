"""Stage tasks for the inputs: data preparation, the base model, the reference model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from gdig_core.config import GdigConfig, resolve_data_path
from tasks import artifacts
from tasks.common import config_json, gpu_slot, model_fingerprint, raw_file_hashes, stage_state
from tasks.faults import retry_condition
from tasks.stage_cache import StageOutput, run_stage

TASK_OPTS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_condition)


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
    from gdig_core.data import prepare_data

    noise = cfg.data.noise
    weak = noise.weak_mt if noise is not None and "low_quality_mt" in noise.kinds else None

    def compute(out: Path, work: Path) -> dict[str, Any]:
        translator = None
        if weak is not None:
            from gdig_core.weak_mt import weak_translator

            model_cfg = cfg.model.model_copy(update={"name": weak.model})
            translator = weak_translator(model_cfg, cfg.data.src_lang, cfg.data.tgt_lang,
                                         batch_size=weak.batch_size, max_new_tokens=weak.max_new_tokens)
        return prepare_data(cfg.data, out, cfg.prompt.language_names, translator)

    inputs = _raw_inputs(cfg)
    code = ["gdig_core/data.py", "gdig_core/noise.py"]
    if noise is not None and noise.third_language is not None:
        third = noise.third_language
        inputs |= raw_file_hashes({"third_language": resolve_data_path(cfg.data, third.path),
                                   "third_language_tgt": resolve_data_path(cfg.data, third.tgt_path) if third.tgt_path else None})
    if weak is not None:  # the weak system's weights and decoding decide the low_quality_mt targets
        from gdig_core.models import model_path

        inputs["weak_mt"] = model_fingerprint(model_path(cfg.model.model_copy(update={"name": weak.model})))
        code += ["gdig_core/weak_mt.py", "gdig_core/generation.py", "gdig_core/encoding.py"]
    result = run_stage(
        run_dir, "data", inputs,
        config_json(cfg, "data", extra={"language_names": cfg.prompt.language_names}),
        code, compute,
    )
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


def pool_hash(data: StageOutput) -> str:
    return data.summary["pool"]["content_hash"]


def seed_hash(data: StageOutput) -> str:
    return data.summary["seed"]["content_hash"]


@task(name="base-model", **TASK_OPTS)
def base_model_task(cfg: GdigConfig, run_dir: str, data: StageOutput) -> tuple[str, str]:
    """``(path or hub id, fingerprint)`` of the base model; the tiny model is built from the pool."""
    if cfg.model.name != "tiny":
        from gdig_core.models import model_path

        path = model_path(cfg.model)
        return path, model_fingerprint(path)
    from gdig_core.data import read_pairs
    from gdig_core.models import build_tiny_model

    def compute(out: Path, work: Path) -> dict[str, Any]:
        table = read_pairs(data.path("pool.parquet"))
        n = cfg.model.tiny.tokenizer_texts
        texts = table.column("src").to_pylist()[:n] + table.column("tgt").to_pylist()[:n]
        build_tiny_model(cfg.model.tiny, texts, out / "model", seed=0)
        return {"texts": len(texts)}

    result = run_stage(run_dir, "base-model", {"pool": pool_hash(data)}, config_json(cfg, "model"),
                       ["gdig_core/models.py"], compute)
    return stage_state((str(result.path("model")), result.digest("model")), result.cached, "base model")


def sample_rows(n_rows: int, sample: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample (all rows when ``sample`` is None or large enough)."""
    if sample is None or sample >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:sample])


@task(name="reference-model", **TASK_OPTS)
def reference_task(cfg: GdigConfig, run_dir: str, data: StageOutput, base: tuple[str, str]) -> tuple[str, str]:
    """Finetune the base model on (a sample of) the pool: the model all gradients are taken at."""
    if not cfg.reference.enabled:
        return base
    from gdig_core.data import read_pairs
    from gdig_core.training import finetune

    def compute(out: Path, work: Path) -> dict[str, Any]:
        table = read_pairs(data.path("pool.parquet"))
        table = table.take(sample_rows(table.num_rows, cfg.reference.sample, cfg.reference.train.seed))
        # Train into the work dir so resume checkpoints survive a killed run, then move in place.
        with gpu_slot(cfg):
            model_dir = finetune(cfg, cfg.reference.train, table, work / "model", base_model=base[0], progress=False)
        shutil.move(str(model_dir), out / "model")
        return {"pairs": table.num_rows}

    result = run_stage(
        run_dir, "reference", {"pool": pool_hash(data), "base": base[1]},
        config_json(cfg, "reference", "prompt", "model"),
        ["gdig_core/training.py", "gdig_core/checkpointing.py", "gdig_core/encoding.py", "gdig_core/models.py"], compute,
    )
    return stage_state((str(result.path("model")), result.digest("model")), result.cached, "reference model")
