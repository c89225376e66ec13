"""Kill anywhere, resume, end with the same selection: the numbered cases of issue 11, end to end.

``gdig run`` runs as a process with the local ephemeral Prefect server (no PREFECT_API_URL), as
a user would, and kills its own process group (SIGKILL: nothing gets to clean up) at a chosen
point (``GDIG_FAULTS={"kill": ...}``, see ``tasks.runtime.faults.kill_point``). Every rerun has a time
limit, so a hang fails the test instead of stalling it. Deployment-mode checks run against the
session's standing server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect_fixtures import PROJECT_ROOT, base_env, pipeline_cmd, run_pipeline

from tasks.runtime.records import read_records

#: A complete tiny run takes about a minute here; five times that means it hangs.
RUN_LIMIT = 300


def _run(run_dir: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    env = base_env(**({"GDIG_FAULTS": json.dumps({"kill": kill})} if kill else {}))
    proc = subprocess.Popen(pipeline_cmd(run_dir, []), env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail(f"the run {'killed at ' + kill if kill else 'to the end'} hung for {RUN_LIMIT} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def _killed(run_dir: Path, point: str) -> list[dict]:
    """Run until the kill point; return that run's records."""
    before = set((run_dir / "records").glob("*.jsonl")) if (run_dir / "records").exists() else set()
    proc = _run(run_dir, point)
    assert proc.returncode == -9, f"expected the kill at {point}, got rc {proc.returncode}:\n{proc.stdout[-4000:]}"
    new = sorted(set((run_dir / "records").glob("*.jsonl")) - before, key=lambda p: p.stat().st_mtime)
    return read_records(new[-1]) if new else []


def _flip(path: Path, start: int, count: int) -> None:
    """Change ``count`` bytes in place; keep the size and the mtime (what verification by size
    and mtime missed)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    for i in range(start, start + count):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _published(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted((run_dir / "selection").glob("*/*/selected.jsonl"))}


def _gpu_slots(run_dir: Path) -> int:
    with sqlite3.connect(run_dir / ".prefect" / "prefect.db") as db:
        return db.execute("select active_slots from concurrency_limit_v2 where name = 'gpu'").fetchone()[0]


@pytest.mark.slow
def test_kill_in_every_stage_then_resume_with_corruption_detected(baseline_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"

    # 1. Killed while training the reference model, holding the GPU slot: the slot's lease died
    #    with the local server; the rerun must not wait for it.
    _killed(run_dir, "reference:1")
    assert _gpu_slots(run_dir) == 1 and list((run_dir / "cas").rglob(".*.tmp"))

    # 2. Killed after the first covariance shard; then 200 float32 values of that shard change
    #    in place (same size, same mtime).
    records = _killed(run_dir, "curvature_stats:0")
    assert "reference" in {r["stage"] for r in records if r["event"] == "computed"}
    shard = next((run_dir / "cas" / "curvature").glob("*.work/shards/a/shard-00000.safetensors"))
    _flip(shard, shard.stat().st_size - 800, 800)

    # 3. Killed during scoring: the corrupted shard was found by its digest and recomputed.
    records = _killed(run_dir, "scores:1")
    corrupt = [r for r in records if r["event"] == "shard_corrupt"]
    assert len(corrupt) == 1 and corrupt[0]["location"] == str(shard) and "digest" in corrupt[0]["reason"]
    assert {r["shard"] for r in records if r["event"] == "shard_computed" and r["stage"] == "curvature/covariance"} == {0, 1}

    # 4. Killed during a finetune; then three bytes of a cached selection change (mtime kept).
    _killed(run_dir, "finetune:1")
    cached = next(p for p in (run_dir / "cas" / "selection").glob("*/selected.jsonl")
                  if json.loads((p.parent / "_manifest.json").read_text())["summary"]["method"] == "gdig")
    _flip(cached, 10, 3)

    # 5. Killed during evaluation: the corrupted selection was recomputed, not published.
    records = _killed(run_dir, "evaluation")
    assert [r["stage"] for r in records if r["event"] == "cache_corrupt"] == ["selection/gdig/b16"]
    assert "selection/gdig/b16" in {r["stage"] for r in records if r["event"] == "computed"}

    # The last rerun finishes: byte-identical selections, nothing left behind, the slot free.
    t0 = time.monotonic()
    final = _run(run_dir)
    assert final.returncode == 0, final.stdout[-4000:]
    assert _published(run_dir) == _published(baseline_run.run_dir)
    assert not list((run_dir / "cas").rglob(".*.tmp"))
    assert _gpu_slots(run_dir) == 0
    assert time.monotonic() - t0 < RUN_LIMIT


_REGISTER_IDLE_DEPLOYMENT = """
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
with get_client(sync_client=True) as client:
    client.create_work_pool(WorkPoolCreate(name="gdig-no-workers", type="process"), overwrite=True)
    flow_id = client.create_flow_from_name("gdig-shard")
    client.create_deployment(flow_id=flow_id, name="no-worker", work_pool_name="gdig-no-workers",
                             entrypoint="flows/shard.py:shard_flow")
"""


@pytest.mark.slow
def test_deployment_mode_checks_before_any_stage(prefect_server, tmp_path: Path) -> None:
    # No such deployment: fails before the data stage, saying how to register it.
    missing = run_pipeline(prefect_server, tmp_path / "a", [
        "orchestration.shard_mode=deployment", "orchestration.shard_deployment=gdig-shard/not-registered"], timeout=300)
    assert missing.returncode != 0
    assert "'gdig-shard/not-registered' (orchestration.shard_deployment) is not registered" in missing.output
    assert "prefect deploy --all" in missing.output and not (tmp_path / "a" / "cas" / "data").exists()

    # A deployment on a pool no worker polls: a bounded wait, then the pool and the fix.
    made = subprocess.run([sys.executable, "-c", _REGISTER_IDLE_DEPLOYMENT], env=prefect_server.env(), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    t0 = time.monotonic()
    idle = run_pipeline(prefect_server, tmp_path / "b", [
        "orchestration.shard_mode=deployment", "orchestration.shard_deployment=gdig-shard/no-worker",
        "orchestration.worker_wait_seconds=3"], timeout=300)
    assert idle.returncode != 0 and time.monotonic() - t0 < 200
    assert "no worker is polling work pool 'gdig-no-workers' after 3 s" in idle.output
    assert "prefect worker start --pool gdig-no-workers" in idle.output
    assert not (tmp_path / "b" / "cas" / "data").exists()
