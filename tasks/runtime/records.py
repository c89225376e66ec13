"""Per-run event records: which stage or shard was computed, found in the cache, or failed.

One JSON-lines file per pipeline run under ``<run_dir>/records/``. Tests assert on these (how
many shards a resumed run skipped, which stages a changed setting recomputed); users read them
to see why a run took as long as it did.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from gdig_core.write_faults import writing

_LOCK = threading.Lock()
_CURRENT: dict[str, Path] = {}


def start_records(run_dir: str | Path, run_id: str) -> Path:
    """Open the record file of this run (one per process at a time) and return its path."""
    path = Path(run_dir) / "records" / f"{run_id}.jsonl"
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    _CURRENT["path"] = path
    return path


def start_records_at(path: Path) -> None:
    """Append to an existing record file (a child process working for the run that opened it)."""
    _CURRENT["path"] = Path(path)


def current_records() -> Path | None:
    """The record file this process appends to, if any."""
    return _CURRENT.get("path")


def record(event: str, stage: str, **fields: Any) -> None:
    """Append one event (``computed``, ``cached``, ``shard_computed``, ``shard_skipped``, ...)."""
    path = _CURRENT.get("path")
    if path is None:
        return
    line = json.dumps({"time": time.time(), "event": event, "stage": stage, **fields}, sort_keys=True)
    with _LOCK, writing(path), open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def latest_records(run_dir: str | Path) -> Path:
    files = sorted((Path(run_dir) / "records").glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no run records under {run_dir}/records")
    return files[-1]
