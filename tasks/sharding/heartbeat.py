"""Heartbeats of dispatched runs on shared storage: how the pipeline tells a run whose worker died
(its state stays "Running" on the server forever) from one that is still working, long before
any timeout.

The run writes a small file every ``heartbeat_seconds`` with its flow run id and a counter; the
pipeline notes, on its own clock, when that content last changed. Comparing contents rather than
timestamps keeps clocks of different machines out of it."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.sharding import storage


@contextmanager
def beating(location: str, every: float, flow_run_id: str) -> Iterator[None]:
    """Write a heartbeat to ``location`` every ``every`` seconds while the block runs (from a
    daemon thread: it dies with the process, which is the point). Removed at the end."""
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while True:
            count += 1
            try:
                storage.write_text(location, json.dumps({"flow_run": flow_run_id, "beat": count,
                                                         "host": socket.gethostname(), "pid": os.getpid()}))
            except OSError:
                pass  # a flaky write is one missed beat; the watcher allows several
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name="gdig-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(every + 5)
        try:
            storage.remove(location)
        except OSError:
            pass


class HeartbeatWatch:
    """The pipeline's view of one heartbeat file: how long it has gone unchanged."""

    def __init__(self, location: str, lost_after: float) -> None:
        self.location, self.lost_after = location, lost_after
        self._last: str | None = None
        self._since: float | None = None

    def silent_for(self, flow_run_id: str) -> float | None:
        """Seconds since the run ``flow_run_id`` last beat (since this watch first looked, before
        its first beat), when that exceeds ``lost_after``; None while it is alive."""
        now = time.monotonic()
        try:
            beat = json.loads(storage.read_text(self.location))
        except (OSError, ValueError):
            beat = None
        # Only this run's beats count: a killed earlier try of the same cell left its last one.
        content = json.dumps(beat, sort_keys=True) if isinstance(beat, dict) and beat.get("flow_run") == flow_run_id \
            else None
        if self._since is None or (content is not None and content != self._last):
            self._last, self._since = content, now
        silent = now - self._since
        return silent if silent > self.lost_after else None
