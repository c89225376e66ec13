"""One run per run directory at a time: an exclusive ``flock`` on ``<run_dir>/.gdig.lock``.

Two runs on one directory would compute every stage into the same work directories (and, with
the local ephemeral server, share one SQLite database). The kernel drops a flock when its process
dies, however it dies, so a killed run never leaves a stale lock. A second run waits (with a
message saying who holds the directory, bounded by ``orchestration.lock_wait_seconds``) or
fails at once (``orchestration.on_locked: fail``).

The lock is re-entrant within a process: ``gdig run`` takes it before Prefect starts, and the
pipeline flow takes it again (a no-op then) so that runs started from a deployment are covered.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from gdig_core.write_faults import writing

LOCK_NAME = ".gdig.lock"
_HELD: dict[str, int] = {}  # resolved lock path -> file descriptor, for this process
_GUARD = threading.Lock()


class RunDirLocked(RuntimeError):
    """Another process holds the run directory (and we were not to wait, or waited long enough)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"pid {info.get('pid')} on {info.get('host')} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.get('since', 0)))} "
                f"({info.get('command', '?')})")
    except (OSError, ValueError, AttributeError):
        return "another process"


def acquire(run_dir: str | Path, on_locked: Literal["wait", "fail"] = "wait", wait_seconds: float = 3600,
            notify: Callable[[str], None] | None = None, poll_seconds: float = 1.0) -> bool:
    """Take the run directory's lock for this process. Returns False when this process held it
    already. Raises RunDirLocked naming the holder when ``on_locked`` is ``fail`` or the wait ran out."""
    path = (Path(run_dir) / LOCK_NAME).resolve()
    key = str(path)
    with _GUARD:
        if key in _HELD:
            return False
        # A run directory one cannot write: one line naming it (it was a bare PermissionError).
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        start = time.monotonic()
        last_note = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                holder = _holder(path)
                if on_locked == "fail" or waited >= wait_seconds:
                    os.close(fd)
                    how = ("orchestration.on_locked is 'fail'" if on_locked == "fail"
                           else f"waited {waited:.0f} s (orchestration.lock_wait_seconds)")
                    raise RunDirLocked(
                        f"run directory {path.parent} is in use by {holder}; {how}. Wait for that run to "
                        "finish, stop it, or give this run another orchestration.run_dir"
                    ) from None
                if notify is not None and (last_note is None or waited - last_note >= 60):
                    notify(f"run directory {path.parent} is in use by {holder}; waiting for it to finish "
                           f"(up to {wait_seconds:.0f} s, orchestration.lock_wait_seconds; "
                           "orchestration.on_locked=fail exits instead)")
                    last_note = waited
                time.sleep(poll_seconds)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": " ".join(sys.argv[:3])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = fd
        return True


def release(run_dir: str | Path) -> None:
    """Drop this process's lock on the run directory (if it holds it)."""
    key = str((Path(run_dir) / LOCK_NAME).resolve())
    with _GUARD:
        fd = _HELD.pop(key, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextmanager
def run_lock(run_dir: str | Path, on_locked: Literal["wait", "fail"] = "wait", wait_seconds: float = 3600,
             notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the run directory's lock for the block (re-entrant: an outer holder keeps it)."""
    took = acquire(run_dir, on_locked, wait_seconds, notify)
    try:
        yield
    finally:
        if took:
            release(run_dir)
