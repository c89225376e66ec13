"""The Prefect side of gdig, by role (each package imports only those after it):

- ``tasks.stages``: the pipeline's stage tasks (data, models, curvature, preconditioning, scoring,
  selection, finetunes, evaluation, report), what a run does before its first stage and after its
  last, and the helpers they share (``tasks.stages.common``).
- ``tasks.sharding``: sharded stages: shard jobs and their sidecars, the step each shard kind runs,
  mapping shards in-process or onto the shard deployment, the per-thread model cache, shared
  storage (local paths and fsspec URLs alike) and the result store.
- ``tasks.caching``: content-addressed stage outputs and their keys, derived from the code.
- ``tasks.runtime``: the Prefect environment, the run lock, the GPU concurrency limit, fault
  injection and retries, event records and artifacts.
"""
