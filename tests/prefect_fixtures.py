"""Fixtures for the orchestration tests: a real ``prefect server`` on a loopback port, process
workers, and a helper that runs the pipeline as a separate process (as a user would).

Imported by tests/conftest.py. The server is session-scoped: starting it costs ~20 s, a pipeline
run against it ~2 s of Prefect overhead (versus ~20 s for an ephemeral server per run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paths import PROJECT_ROOT

TINY_CONFIG = PROJECT_ROOT / "configs" / "test-tiny.yaml"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PREFECT_") or k == "GDIG_FAULTS":
            env.pop(k)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@dataclass
class PrefectServer:
    url: str
    home: Path
    proc: subprocess.Popen

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(PREFECT_API_URL=self.url, PREFECT_HOME=str(self.home), **extra)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """Terminate a process group we started (never anything else)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def start_server(home: Path) -> PrefectServer:
    """A ``prefect server`` on a free loopback port with its database in ``home`` (log:
    ``home/server.log``); stop it with ``stop(server.proc)``."""
    port = free_port()
    env = base_env(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="true")
    with open(home / "server.log", "w") as log:
        proc = subprocess.Popen(
            [PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=home,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(url + "/health", 180, proc)
    except BaseException:
        stop(proc)
        raise
    return PrefectServer(url=url, home=home, proc=proc)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = start_server(tmp_path_factory.mktemp("prefect-home"))
    try:
        yield server
    finally:
        stop(server.proc)


@dataclass
class PipelineRun:
    returncode: int
    output: str
    run_dir: Path
    outputs: dict[str, Any] | None

    def records(self) -> list[dict[str, Any]]:
        from tasks.runtime.records import latest_records, read_records

        return read_records(latest_records(self.run_dir))

    def events(self, event: str, stage_prefix: str = "") -> list[dict[str, Any]]:
        return [r for r in self.records() if r["event"] == event and r["stage"].startswith(stage_prefix)]


def pipeline_cmd(run_dir: Path, overrides: list[str], config: Path = TINY_CONFIG) -> list[str]:
    cmd = [PY, "-m", "gdig_cli.run_cmd", str(config), "--json", "--set", f"orchestration.run_dir={run_dir}"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def run_pipeline(
    server: PrefectServer, run_dir: Path, overrides: list[str] = (), timeout: float = 900, **env: str
) -> PipelineRun:
    """Run ``gdig run`` on the tiny config as a subprocess against ``server``."""
    proc = subprocess.run(
        pipeline_cmd(run_dir, list(overrides)), env=server.env(**env), cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    outputs = None
    if proc.returncode == 0:
        start = proc.stdout.index("{\n")
        outputs = json.loads(proc.stdout[start:])
    return PipelineRun(proc.returncode, out, run_dir, outputs)


def selected_ids(run_dir: Path) -> dict[str, list[str]]:
    """Selected ids in rank order per method/budget, from the published selection files."""
    import pyarrow.parquet as pq

    out = {}
    for p in sorted((run_dir / "selection").glob("*/*/selected.parquet")):
        out[f"{p.parent.parent.name}/{p.parent.name}"] = pq.read_table(p).column("id").to_pylist()
    return out


def copy_run(src: Path, dst: Path, stages: list[str]) -> Path:
    """A new run dir holding only the named cached stages of ``src`` (mtimes kept, so they verify)."""
    for stage in stages:
        if (src / "cas" / stage).exists():
            shutil.copytree(src / "cas" / stage, dst / "cas" / stage, copy_function=shutil.copy2)
    return dst


POOL = "gdig-gpu"  # the pool prefect.yaml names


def prefect_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "prefect", *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)


def worker_env(server: PrefectServer) -> dict[str, str]:
    """The environment of deployments and workers: this checkout, quick polling."""
    return server.env(GDIG_PROJECT_DIR=str(PROJECT_ROOT), PREFECT_WORKER_QUERY_SECONDS="1",
                      PREFECT_WORKER_PREFETCH_SECONDS="5")


def deploy_all(env: dict[str, str]) -> str:
    """The process pool from deployments/process-gpu.json and every deployment of prefect.yaml;
    returns ``prefect deployment ls``."""
    made = prefect_cli(env, "work-pool", "create", POOL, "--type", "process",
                       "--base-job-template", str(PROJECT_ROOT / "deployments" / "process-gpu.json"), "--overwrite")
    assert made.returncode == 0, made.stdout + made.stderr
    deployed = prefect_cli(env, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return prefect_cli(env | {"COLUMNS": "250"}, "deployment", "ls").stdout


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    log: Path


def start_worker(env: dict[str, str], name: str, where: Path, **extra: str) -> Worker:
    """A process worker on the pool, one flow run at a time, in its own process group."""
    log = where / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [PY, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process", "--name", name,
             "--limit", "1"],
            env=env | {"GDIG_WORKER_CACHE": str(where / f"{name}-cache")} | extra, cwd=where,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Worker(name, proc, log)


@pytest.fixture(scope="session")
def baseline_run(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """One complete in-process run of the tiny config, shared by the cache, resume and worker tests."""
    run = run_pipeline(prefect_server, tmp_path_factory.mktemp("baseline") / "run")
    assert run.returncode == 0, run.output[-5000:]
    return run
