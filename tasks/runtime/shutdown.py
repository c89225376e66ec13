"""Stopping a run on SIGTERM or SIGINT: its child processes (the local Prefect server among them)
stopped, its run lock released, one line said, exit status 128 + the signal.

Prefect's flow engine installs its own SIGTERM handler when it runs in the main thread: the
signal then raises inside the flow, whose thread pool waits for the task in progress (a finetune:
minutes) before anything ends, and the process finally kills itself with the default action,
which runs no cleanup: the ephemeral server was left running, holding the run directory's
database. :func:`run_stoppable` runs the pipeline in a worker thread instead (Prefect installs no
handler there) and keeps the signals for the main thread, which stops at once. Nothing half-done is
trusted afterwards: every output is written atomically and verified on reuse, exactly as after a
SIGKILL, so the next run resumes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc; empty elsewhere), children first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat") if Path("/proc/self/stat").exists() else []:
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":  # a zombie is dead already, only not yet reaped
            parents.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    out, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo += parents.get(child, [])
    return out


def _prefect_server_pids() -> list[int]:
    """The ephemeral servers this process started (where /proc cannot tell the children)."""
    module = sys.modules.get("prefect.server.api.server")
    servers = getattr(getattr(module, "SubprocessASGIServer", None), "_instances", {}) if module else {}
    return [s.server_process.pid for s in list(servers.values()) if getattr(s, "server_process", None)]


def _alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:  # not our child: ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_children(grace_seconds: float = 5.0) -> list[int]:
    """SIGTERM every descendant process, SIGKILL those left after ``grace_seconds``; their pids."""
    pids = list(dict.fromkeys(_descendants(os.getpid()) + _prefect_server_pids()))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def run_stoppable(work: Callable[[], T], on_stop: Callable[[int], None]) -> T:
    """``work()`` in a worker thread; a SIGTERM or SIGINT meanwhile calls ``on_stop(signum)`` (stop the
    children, release the lock, say so) and ends the process with status 128 + signum. Outside
    the main thread (where no signal handler can be set) ``work()`` just runs."""
    if threading.current_thread() is not threading.main_thread():
        return work()
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread as it is
            outcome["error"] = err

    stopping = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stopping.is_set():
            return  # a second Ctrl-C while stopping: the first one's cleanup is under way
        stopping.set()
        try:
            on_stop(signum)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)

    worker = threading.Thread(target=target, name="gdig-pipeline", daemon=True)
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
