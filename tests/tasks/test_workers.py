"""Scale-out for real: a ``prefect server`` on a loopback port, the deployments of prefect.yaml on a
process work pool (built from deployments/process-gpu.json), two ``prefect worker`` processes, and
the pipeline dispatching every curvature and scoring shard to them as deployment runs. The
selection must equal the in-process run's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prefect_fixtures import copy_run, deploy_all, run_pipeline, selected_ids, start_worker, stop, worker_env


@pytest.mark.slow
def test_shards_on_two_workers_match_in_process(prefect_server, baseline_run, tmp_path: Path) -> None:
    env = worker_env(prefect_server)
    listed = deploy_all(env)
    assert "gdig-shard/gdig-shard" in listed and "gdig-pipeline/gdig-pipeline" in listed, listed

    workers = []
    try:
        for name in ("worker-a", "worker-b"):
            workers.append(start_worker(env, name, tmp_path))
        time.sleep(3)
        run_dir = copy_run(baseline_run.run_dir, tmp_path / "run", ["data", "base-model", "reference"])
        run = run_pipeline(prefect_server, run_dir, [
            "orchestration.shard_mode=deployment",
            "orchestration.shard_deployment=gdig-shard/gdig-shard",
            f"orchestration.shared_storage={tmp_path / 'shared'}",
            "orchestration.max_workers=2",
            "orchestration.gpu_concurrency_limit=gpu-workers-test",
            "orchestration.gpu_slots=2",
        ])
    finally:
        for w in workers:
            stop(w.proc)
    assert run.returncode == 0, run.output[-6000:]
    shards = {stage: len(run.events("shard_computed", stage)) for stage in ("curvature/covariance", "curvature/lambda", "scoring")}
    assert shards == {"curvature/covariance": 2, "curvature/lambda": 2, "scoring": 4}, shards
    # The shard outputs were written by the workers to shared storage: curvature statistics, and
    # the result store's score segments.
    assert len(list((tmp_path / "shared" / "shards").rglob("shard-*.done.json"))) == 4
    assert len(list((tmp_path / "shared" / "store" / "scores").rglob("seg-*.done.json"))) == 4
    # Both workers took shard runs.
    for name in ("worker-a", "worker-b"):
        text = (tmp_path / f"{name}.log").read_text()
        assert "gdig-shard" in text or "Completed" in text, text[-3000:]
    assert selected_ids(run_dir) == selected_ids(baseline_run.run_dir)
