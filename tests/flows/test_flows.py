"""The pipeline flow's machinery: kill-and-resume, a shard that keeps failing, the UI form and the
deployments' parameters. End-to-end tests run ``gdig run`` as a process against a real Prefect
server on the tiny config. Shard planning and sidecars: test_shards.py; shared storage:
test_storage.py; OOM halving and retries: test_faults.py; the report: test_report.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prefect_fixtures import PROJECT_ROOT, copy_run, pipeline_cmd, run_pipeline, selected_ids

from gdig_core.config import GdigConfig, load_config

UP_TO_PRECONDITION = ["data", "base-model", "reference", "curvature", "precondition"]


# ---------------------------------------------------------------- units


def test_pipeline_parameters_are_a_form() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import gdig_pipeline

    schema = parameter_schema(gdig_pipeline.fn).model_dump()
    assert "config" in schema["properties"]
    assert {"GdigConfig", "OrchestrationConfig", "SelectionConfig"} <= set(schema["definitions"])


def test_prefect_yaml_parameters_validate() -> None:
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert names["gdig-pipeline"]["schedules"][0]["cron"]
    cfg = GdigConfig.model_validate(names["gdig-pipeline"]["parameters"]["config"])
    assert cfg.orchestration.shard_mode == "deployment"
    # The nightly selection follows the held-out tuning runs (docs/choosing.md): no EK-FAC with
    # tau 1.0 (it selected almost nothing by quality on Gemma), the best cascade as gdig.
    gdig = next(m for m in cfg.selection.methods if m.name == "gdig")
    # Prefect checks deployment parameters against the JSON schema, where a method is an object
    # (the short name "random" that pydantic accepts made `prefect deploy` fail with 422).
    raw_methods = names["gdig-pipeline"]["parameters"]["config"]["selection"]["methods"]
    assert all(isinstance(m, dict) for m in raw_methods), raw_methods
    assert cfg.curvature.method == "identity" and not cfg.reference.enabled and cfg.qe.enabled
    assert cfg.selection.quality_rule == "topk" and gdig.prefilter == ["opusfilter", "qe"]
    assert cfg.orchestration.shard_deployment == "gdig-shard/" + names["gdig-shard"]["name"]
    # The nightly run dispatches its downstream cells to the downstream deployment's flow.
    assert cfg.orchestration.downstream_mode == "deployment"
    flow_name, deployment = cfg.orchestration.downstream_deployment.split("/")
    assert names[deployment]["entrypoint"] == "flows/downstream.py:cell_flow"
    from flows.downstream import cell_flow

    assert cell_flow.name == flow_name
    # The Kubernetes template: valid JSON, one GPU per flow run (a shard, a cell), the shared PVC.
    k8s = json.loads((PROJECT_ROOT / "deployments" / "kubernetes-gpu.json").read_text())
    props = k8s["variables"]["properties"]
    assert props["gpu_count"]["default"] == 1 and props["shared_pvc"]["default"]
    assert props["env"]["default"]["GDIG_WORKER_CACHE"].startswith(props["shared_mount_path"]["default"])
    assert load_config(PROJECT_ROOT / "configs" / "test-tiny.yaml").data.pool.sample == 64


# ---------------------------------------------------------------- end to end


def _sidecars(run_dir: Path) -> list[Path]:
    """Finished scoring shards: segments of the result store, listed by their sidecars."""
    return list((run_dir / "store" / "scores").glob("*/seg-*.parquet.done.json"))


@pytest.mark.slow
def test_killed_run_resumes_and_skips_finished_shards(prefect_server, baseline_run, tmp_path: Path) -> None:
    run_dir = copy_run(baseline_run.run_dir, tmp_path / "run", UP_TO_PRECONDITION)
    # The killed run keeps its GPU slot until the lease expires (>= 60 s); with two slots the
    # rerun need not wait for that.
    limit = ["orchestration.gpu_concurrency_limit=gpu-resume-test", "orchestration.gpu_slots=2"]
    # Each scoring shard sleeps 2 s first, so the kill lands mid-scoring.
    proc = subprocess.Popen(
        pipeline_cmd(run_dir, limit), env=prefect_server.env(GDIG_FAULTS=json.dumps({"delay": 2.0})), cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while len(_sidecars(run_dir)) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "scoring never started"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    done = len(_sidecars(run_dir))
    assert 2 <= done < 4

    resumed = run_pipeline(prefect_server, run_dir, limit)
    assert resumed.returncode == 0, resumed.output[-4000:]
    # The finished shards' rows are in the result store: the rerun plans shards over the rest only.
    scoring = next(r for r in resumed.events("computed", "scoring/"))
    assert (scoring["rows_reused"], scoring["rows_scored"]) == (16 * done, 64 - 16 * done)
    assert len(resumed.events("shard_computed", "scoring")) == 4 - done
    assert selected_ids(run_dir) == selected_ids(baseline_run.run_dir)


@pytest.mark.slow
def test_failing_shard_fails_the_run_after_the_others(prefect_server, baseline_run, tmp_path: Path) -> None:
    run_dir = copy_run(baseline_run.run_dir, tmp_path / "run", UP_TO_PRECONDITION)
    faults = {"scores:1": "oserror", "scores:2": "oom>4"}
    run = run_pipeline(prefect_server, run_dir, ["orchestration.retries=2", "orchestration.retry_delay_seconds=0.1"],
                       GDIG_FAULTS=json.dumps(faults))
    assert run.returncode != 0
    # The failure names the shard and its error...
    assert "shard 1 (rows 16-32): OSError: injected I/O failure in scores shard 1" in run.output
    # ...after it was retried, and after every other shard finished (shard 2 via OOM halving).
    failed = run.events("shard_failed", "scoring")
    assert [r["shard"] for r in failed] == [1]
    assert {r["shard"] for r in run.events("shard_computed", "scoring")} == {0, 2, 3}
    assert run.output.count("injected I/O failure in scores shard 1") >= 3  # 1 try + 2 retries logged
    assert "out of memory at batch size 16; retrying with 8" in run.output
    assert "out of memory at batch size 8; retrying with 4" in run.output
    assert not list((run_dir / "cas" / "scoring").glob("*/_manifest.json"))
