"""SIGTERM and SIGINT stop a run at once: its children (the Prefect server among them) stopped, its
lock released (``tasks.runtime.shutdown``). Before, SIGTERM left the run's ephemeral Prefect
server running, holding the run directory's database."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect_fixtures import PROJECT_ROOT, TINY_CONFIG, base_env

# A stand-in for `gdig run`: the lock, a child process (as the Prefect server is), work in a thread.
_RUN = """
import subprocess, sys, time
from pathlib import Path
from gdig_cli.run_cmd import _stopped
from tasks.runtime import run_lock
from tasks.runtime.shutdown import run_stoppable

run_dir = Path(sys.argv[1])
run_lock.acquire(run_dir, "fail")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
run_stoppable(lambda: (print(child.pid, flush=True), time.sleep(120)), _stopped(run_dir))  # handlers are set
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def _lock_is_free(run_dir: Path) -> bool:
    with open(run_dir / ".gdig.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_children_and_releases_the_lock(tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _RUN, str(run_dir)], cwd=PROJECT_ROOT, env=base_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(proc.stdout.readline())
        assert not _lock_is_free(run_dir)
        proc.send_signal(sig)
        proc.wait(30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {sig.name}" in err and "released" in err and "Traceback" not in err
    assert _gone(child) and _lock_is_free(run_dir)


def _descendants(pid: int) -> list[int]:
    from tasks.runtime.shutdown import _descendants

    return _descendants(pid)


@pytest.mark.slow
def test_sigterm_stops_gdig_run_and_its_prefect_server(tmp_path: Path, data_dir: Path) -> None:
    """The real thing: `gdig run` with its own ephemeral server, SIGTERM once the flow runs."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "gdig_cli.run_cmd", str(TINY_CONFIG), "--set", f"orchestration.run_dir={run_dir}",
           "--set", f"data.data_dir={data_dir}"]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((run_dir / "records").glob("*.jsonl")):  # written once the flow runs on the server
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the flow never started"
            time.sleep(0.2)
        children = _descendants(proc.pid)
        assert children, "no Prefect server process under gdig run"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        stopped_in = time.monotonic() - t0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err and stopped_in < 30
    assert all(_gone(pid) for pid in children), "a child of gdig run (its Prefect server) outlived it"
    assert _lock_is_free(run_dir)
