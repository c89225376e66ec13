"""Settings of the run itself: run directory, workers, shards, retries, storage, and pins.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gdig_core.config.base import Section


class OrchestrationConfig(Section):
    run_dir: str = "runs"
    shard_mode: Literal["local", "deployment"] = "local"
    shard_deployment: str = "gdig-shard/gdig-shard"
    #: Where shard outputs live when workers run elsewhere (a path or fsspec URL).
    shared_storage: str | None = None
    #: Name of the Prefect global concurrency limit every GPU task holds a slot of.
    gpu_concurrency_limit: str = "gpu"
    #: Slots of that limit when the pipeline has to create it (None: max_workers); an existing
    #: limit keeps its own count (``prefect gcl create gpu --limit N`` on a cluster).
    gpu_slots: int | None = Field(default=None, gt=0)
    #: Lease of a held slot, renewed while the task runs; a killed run's slots return to the pool
    #: when it expires (the Prefect server's minimum is 60 s).
    gpu_lease_seconds: float = Field(default=60, ge=60)
    #: Shards (and selections, finetunes, evaluations) run concurrently: threads in local mode,
    #: deployment runs in flight in deployment mode.
    max_workers: int = Field(default=1, gt=0)
    #: Retries of a transient failure (I/O, lost worker, OOM at batch size 1), with exponential
    #: backoff starting at retry_delay_seconds.
    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: float = Field(default=2.0, ge=0)
    #: Longest wait for a slot of the GPU limit; past it the run fails saying who holds the slots.
    gpu_slot_wait_seconds: float = Field(default=3600, gt=0)
    #: Deployment mode: longest wait for a worker to be online at the start, and for one to pick
    #: up each shard run; past it the run fails saying which pool needs a worker.
    worker_wait_seconds: float = Field(default=600, gt=0)
    #: Deployment mode: longest a shard run may take once picked up (a lost worker leaves it
    #: "Running" forever); past it the run is cancelled and the shard retried.
    shard_timeout_seconds: float = Field(default=6 * 3600, gt=0)
    #: Downstream cells (one finetune on one selection with one seed, then its evaluation): in this
    #: process (one at a time on a CPU, one per visible GPU in parallel), or each as a flow run of
    #: downstream_deployment on the work pool, inputs and outputs through shared_storage.
    downstream_mode: Literal["local", "deployment"] = "local"
    downstream_deployment: str = "gdig-downstream/gdig-downstream"
    #: Deployment mode: longest a cell run may take once picked up; past it the run is cancelled
    #: and the cell retried.
    cell_timeout_seconds: float = Field(default=48 * 3600, gt=0)
    #: Deployment mode: how often a running cell writes its heartbeat to shared storage, and how
    #: long a Running cell may go without a new one before it counts as lost (its worker died):
    #: then it is cancelled and retried, instead of waiting for cell_timeout_seconds.
    heartbeat_seconds: float = Field(default=15, gt=0)
    lost_after_seconds: float = Field(default=180, gt=0)
    #: Another run holds this run directory: wait for it (up to lock_wait_seconds) or fail at once.
    on_locked: Literal["wait", "fail"] = "wait"
    lock_wait_seconds: float = Field(default=3600, ge=0)


class PinnedStage(Section):
    """A stage output of an earlier run, reused as it is: its directory (the one holding
    ``_manifest.json``, as ``gdig pins RUN_DIR`` prints it) and the content hash it must have."""

    dir: str
    hash: str = Field(min_length=1)


class PinConfig(Section):
    """Reuse a reference model and curvature factors instead of fitting them on this run's pool, so
    a scheduled run over a grown pool scores only its new rows. Each pin is verified (every file
    against the directory's manifest, the manifest against ``hash``) and refused when it differs."""

    #: The reference model stage (``cas/reference/<key>``).
    reference: PinnedStage | None = None
    #: Curvature factors per scoring model (``reference``/``base``): ``cas/curvature/<key>``.
    factors: dict[Literal["reference", "base"], PinnedStage] = Field(default_factory=dict)
