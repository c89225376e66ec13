"""The pipeline flow's machinery: shard skip/verify, kill-and-resume, a shard that keeps failing,
CUDA-OOM batch halving, the UI form, the report. End-to-end tests run ``gdig run`` as a process
against a real Prefect server on the tiny config; unit tests call the helpers directly."""

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
from tasks.runtime.faults import TransientError, is_transient, with_oom_backoff
from tasks.sharding.jobs import mark_done, plan, read_done

UP_TO_PRECONDITION = ["data", "base-model", "reference", "curvature", "precondition"]


# ---------------------------------------------------------------- units


def test_plan_covers_every_row_once() -> None:
    assert plan(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan(8, 4) == [(0, 4), (4, 8)]
    assert plan(0, 4) == []


def test_shard_sidecar_verifies_output(tmp_path: Path) -> None:
    out = tmp_path / "shard-00000.parquet"
    assert read_done(str(out)) is None
    out.write_bytes(b"x" * 100)
    assert read_done(str(out)) is None  # no sidecar: the shard never finished
    mark_done(out, str(out), {"n": 3})
    assert read_done(str(out))["summary"] == {"n": 3}
    out.write_bytes(b"x" * 40 + b"y" * 10 + b"x" * 50)  # same size, changed in place
    assert read_done(str(out)) is None
    out.write_bytes(b"x" * 50)  # truncated after the fact
    assert read_done(str(out)) is None
    out.unlink()
    assert read_done(str(out)) is None


def test_oom_halves_the_batch_until_it_fits() -> None:
    seen = []

    def run(bs: int) -> int:
        seen.append(bs)
        if bs > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return bs

    assert with_oom_backoff(run, 16) == 2 and seen == [16, 8, 4, 2]
    with pytest.raises(ValueError):
        with_oom_backoff(lambda bs: (_ for _ in ()).throw(ValueError("bug")), 16)

    def always(bs: int) -> int:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        with_oom_backoff(always, 4)


def test_transient_classification() -> None:
    assert is_transient(OSError("nfs hiccup")) and is_transient(TransientError("worker lost"))
    assert is_transient(ConnectionError()) and is_transient(TimeoutError())
    assert not is_transient(ValueError("a bug")) and not is_transient(KeyError("x"))


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
    assert cfg.orchestration.shard_deployment == "gdig-shard/" + names["gdig-shard"]["name"]
    assert load_config(PROJECT_ROOT / "configs" / "test-tiny.yaml").data.pool.sample == 64


def test_report_tables_and_plot(tmp_path: Path) -> None:
    from gdig_core.report import build_report

    evals = [
        {"method": "zero-shot", "budget": 0, "size": 0, "seed": None,
         "metrics": {"flores": {"bleu": 1.0, "chrf": 20.0}, "wmt22": {"bleu": 0.5, "chrf": 18.0}}},
        {"method": "gdig", "budget": 100, "size": 100, "seed": 0,
         "metrics": {"flores": {"bleu": 7.0, "chrf": 31.0}, "wmt22": {"bleu": 6.0, "chrf": 30.0}}},
        {"method": "gdig", "budget": 100, "size": 100, "seed": 1,
         "metrics": {"flores": {"bleu": 9.0, "chrf": 33.0}, "wmt22": {"bleu": 8.0, "chrf": 32.0}}},
        {"method": "random", "budget": 100, "size": 100, "seed": 0,
         "metrics": {"flores": {"bleu": 5.0, "chrf": 29.0}, "wmt22": {"bleu": 4.0, "chrf": 27.0}}},
    ]
    sels = [{"method": "gdig", "budget": 100, "size": 100, "clean_share": 0.9},
            {"method": "random", "budget": 100, "size": 100, "clean_share": 0.7}]
    result = build_report(evals, sels, tmp_path)
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["gdig"]["flores/bleu"] == pytest.approx(8.0) and rows["gdig"]["seeds"] == 2
    assert rows["random"]["clean_share"] == 0.7 and rows["zero-shot"]["wmt22/chrf"] == 18.0
    assert [r["method"] for r in result["rows"]] == ["zero-shot", "gdig", "random"]
    md = (tmp_path / "report.md").read_text()
    assert "| method | kind | model | budget |" in md and "flores/bleu" in md
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert json.loads((tmp_path / "comparison.json").read_text())[1]["method"] == "gdig"


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
