"""Small helpers shared by the stage tasks: their Prefect options, the content hashes of the
prepared pool and seed, model fingerprints, cached task states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.cache_policies import NO_CACHE

from gdig_core.integrity import file_digest
from gdig_core.io import text_sha256
from tasks.caching.stage_cache import StageOutput
from tasks.runtime.faults import retry_condition

#: Every stage task: no Prefect result cache (stages cache by content, ``tasks.caching``), no
#: persisted results, retries only for transient errors.
TASK_OPTS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_condition)

_SMALL_FILE = 16 << 20


def pool_hash(data: StageOutput) -> str:
    """Content hash of the prepared pool (an input of every stage that reads it)."""
    return data.summary["pool"]["content_hash"]


def seed_hash(data: StageOutput) -> str:
    """Content hash of the prepared seed set."""
    return data.summary["seed"]["content_hash"]


def model_fingerprint(path_or_id: str) -> str:
    """Content fingerprint of a checkpoint directory (names, sizes, hashes of the small files),
    or the identifier itself for a hub id. Hashing every weight of a 7B model would take minutes;
    sizes plus config and index hashes change whenever the weights are re-saved."""
    p = Path(path_or_id)
    if not p.exists():
        return text_sha256("hub", path_or_id)
    if p.is_file():
        return file_digest(p)
    parts: list[str] = []
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        st = f.stat()
        parts += [f.relative_to(p).as_posix(), str(st.st_size)]
        if st.st_size <= _SMALL_FILE:
            parts.append(file_digest(f))
    return text_sha256(*parts)


def raw_file_hashes(paths: dict[str, Path | None]) -> dict[str, str]:
    """sha256 of each existing raw input file (missing ones hash as 'missing' and fail later)."""
    out: dict[str, str] = {}
    for name, path in paths.items():
        if path is None:
            continue
        if path.is_dir():
            out[name] = model_fingerprint(str(path))
        else:
            out[name] = file_digest(path) if path.exists() else "missing"
    return out


def stage_state(value: Any, cached: bool, what: str) -> Any:
    """Finish a task run whose outputs came from the cache in a state named ``Cached`` (the UI
    shows it), carrying the same value. Callers must use ``task.submit(...).result()``, which
    unwraps it; outside a task run (``task.fn(...)`` in unit tests) the value comes back as is."""
    from prefect.context import TaskRunContext
    from prefect.states import Completed

    if not cached or TaskRunContext.get() is None:
        return value
    return Completed(data=value, name="Cached", message=f"{what}: verified outputs reused")
