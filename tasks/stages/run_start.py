"""What the pipeline does before its first stage: take the run directory's lock, clear what killed
runs left behind, check everything that can be checked up front, and make sure the GPU limit and
(in deployment mode) the shard and downstream deployments and a worker are there. Each step fails fast with a
message that says what is wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path

from gdig_core.config import GdigConfig
from gdig_core.preflight import preflight
from tasks.caching.stage_cache import sweep_temporaries
from tasks.runtime import artifacts, run_lock
from tasks.runtime.gpu_slots import prepare_gpu_limit
from tasks.sharding.dispatch import cell_target, check_deployment, shard_target, wait_for_worker
from tasks.stages.grid import local_parallelism
from tasks.stages.pins import check_pins


def begin_run(cfg: GdigConfig, run_dir: str | Path) -> None:
    """Lock, sweep, check. The lock stays with this process until ``gdig run`` exits (or
    ``run_lock.release``); a flow run started by a worker is its own process."""
    log = artifacts.logger()
    orch = cfg.orchestration
    run_lock.acquire(run_dir, orch.on_locked, orch.lock_wait_seconds, notify=log.warning)
    removed = sweep_temporaries(run_dir)
    if removed:
        log.info("removed %d temporary file(s)/dir(s) left in %s/cas by a killed run", len(removed), run_dir)
    preflight(cfg)
    check_pins(cfg)  # every byte of a pinned model and factor set, before any stage
    save_run_config(cfg, run_dir)
    # Local cells on several GPUs each hold a slot at once.
    prepare_gpu_limit(orch, run_dir, at_least=local_parallelism(cfg) if orch.downstream_mode == "local" else 1)
    if orch.downstream_mode == "deployment" and orch.lost_after_seconds < 2 * orch.heartbeat_seconds:
        raise ValueError(f"orchestration.lost_after_seconds ({orch.lost_after_seconds:g}) must be at least twice "
                         f"heartbeat_seconds ({orch.heartbeat_seconds:g}): a cell would count as lost between two beats")
    targets = ([shard_target(orch)] if orch.shard_mode == "deployment" else []) + (
        [cell_target(orch)] if orch.downstream_mode == "deployment" else [])
    for target in targets:
        pool = check_deployment(target)
        workers = wait_for_worker(pool, orch)
        log.info("%s deployment %r on work pool %r: %d worker(s) online", target.unit, target.deployment, pool, workers)


RUN_CONFIG = "run_config.yaml"


def save_run_config(cfg: GdigConfig, run_dir: str | Path) -> None:
    """The config of the latest run, as run (``gdig rescore RUN_DIR`` starts from it)."""
    import yaml

    from gdig_core.io import atomic_write_text

    atomic_write_text(Path(run_dir) / RUN_CONFIG, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
