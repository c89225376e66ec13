"""The QE stage: the base model's dual conditional cross-entropy of every pool pair
(gdig_core.filters.qe), for the ``qe`` method and pre-filter and the evidence tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from gdig_core.config import GdigConfig
from tasks.caching.stage_cache import StageOutput, run_stage
from tasks.caching.stage_keys import key_parts, stage_calls
from tasks.runtime import artifacts
from tasks.runtime.faults import kill_point
from tasks.runtime.gpu_slots import gpu_slot
from tasks.stages.common import TASK_OPTS, pool_hash, stage_state

QE_FILE = "qe.parquet"


@task(name="qe", **TASK_OPTS)
def qe_task(cfg: GdigConfig, run_dir: str, data: StageOutput, base: tuple[str, str]) -> StageOutput:
    """``qe.parquet`` (id, nll_fwd, nll_bwd, tokens_fwd, tokens_bwd, qe) in pool order."""
    from gdig_core.data.pairs import read_pairs
    from gdig_core.filters.qe import write_qe

    calls = stage_calls("qe", cfg)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        import time

        pairs = read_pairs(data.path("pool.parquet"))
        bar = artifacts.progress(artifacts.artifact_key("qe", "progress"), 0.0, "QE: 0 pool pairs scored")

        def progress(done: int, total: int) -> None:
            artifacts.update_progress(bar, done / max(total, 1), f"QE: {done}/{total} pool pairs scored")
            kill_point("qe", done)

        t0 = time.perf_counter()
        with gpu_slot(cfg.orchestration, "qe"):
            model, tokenizer = calls["load_model"](path=base[0])
            table = calls["qe"](model=model, tokenizer=tokenizer, pairs=pairs, work_dir=work / "pieces",
                                progress=progress)
        write_qe(table, out / QE_FILE)
        return {"rows": table.num_rows, "seconds_scoring": time.perf_counter() - t0}

    result = run_stage(run_dir, "qe", {"pool": pool_hash(data), "base": base[1]}, *key_parts(calls), compute,
                       label="qe")
    return stage_state(result, result.cached, "qe")


def qe_scores(qe: StageOutput | None) -> dict[str, float] | None:
    """id -> QE score from the stage's output (None without a QE stage)."""
    if qe is None:
        return None
    from gdig_core.filters.qe import qe_by_id, read_qe

    return qe_by_id(read_qe(qe.path(QE_FILE)))
