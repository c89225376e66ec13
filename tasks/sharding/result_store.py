"""Where per-candidate results live across runs (``gdig_core.influence.row_store``): one directory per
context (the hash of everything a row's result depends on except its text), holding segments
``seg-<hash>.parquet`` whose ids are content keys, each with the usual ``.done.json`` sidecar
(size, content digest, and the content keys it holds).

The store is ``<run_dir>/store/<kind>/<context>/`` (``<shared_storage>/store/...`` when shard
workers run elsewhere), outside ``cas/``: stage outputs come and go with their keys, the store
outlives them, so a later run over a grown pool, or a resumed one, finds every row already done.
A segment enters the index only when its sidecar verifies (the digest of small score segments is
checked up front; that of the large gradient segments when they are read), so nothing reused is
unverified and a corrupt segment's rows are simply computed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gdig_core.config import GdigConfig
from tasks.sharding import storage
from tasks.sharding.jobs import mark_done, note_corrupt, read_done, sidecar

StoreKind = Literal["scores", "gradients"]
SIDE_SUFFIX = ".done.json"


def store_root(cfg: GdigConfig, run_dir: str, kind: StoreKind, context: str) -> str:
    base = cfg.orchestration.shared_storage or str(Path(run_dir))
    return storage.join(base, "store", kind, context[:24])


@dataclass
class StoreIndex:
    """Content key -> (segment location, row), and each segment's recorded digest."""

    root: str
    rows: dict[str, tuple[str, int]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def segments(self, keys: list[str]) -> dict[str, list[tuple[str, int]]]:
        """Segment location -> [(key, row)] of the given keys, segments in first-use order."""
        out: dict[str, list[tuple[str, int]]] = {}
        for key in keys:
            location, row = self.rows[key]
            out.setdefault(location, []).append((key, row))
        return out


def index_store(root: str, verify_digests: bool) -> StoreIndex:
    """Every finished segment under ``root`` whose sidecar and size (and, with
    ``verify_digests``, content digest) check out. A key held by two segments keeps the first by
    name: which one is a fixed choice, so a rerun reads the same bytes."""
    index = StoreIndex(root)
    for name in storage.list_names(root):
        if not name.endswith(".parquet"):
            continue
        location = storage.join(root, name)
        meta = read_done(location, digest=verify_digests)
        if meta is None:
            continue
        keys = (meta.get("summary") or {}).get("keys")
        if not isinstance(keys, list):
            note_corrupt(location, f"{location}{SIDE_SUFFIX}: lists no content keys")
            continue
        index.digests[location] = meta["digest"]
        for row, key in enumerate(keys):
            index.rows.setdefault(str(key), (location, row))
    return index


def read_verified(index: StoreIndex, location: str) -> bytes | None:
    """A segment's bytes when they hash to its recorded digest; None (logged and recorded as
    corrupt) when they do not."""
    from gdig_core.integrity import bytes_digest

    try:
        data = storage.read_bytes(location)
    except OSError as err:
        note_corrupt(location, f"{location}: cannot be read ({err})")
        return None
    if bytes_digest(data) != index.digests[location]:
        note_corrupt(location, f"{location}: content differs from the digest in its sidecar (corrupted in place)")
        # Unlisted, so the rows' recomputed segment replaces it in the next index.
        storage.remove(sidecar(location))
        return None
    return data


def publish_segment(local_file: Path, location: str, keys: list[str], summary: dict[str, Any]) -> None:
    """Put a finished segment in place, then its sidecar (which lists its content keys)."""
    storage.put_file(local_file, location)  # nothing to copy when written in place
    mark_done(local_file, location, {**summary, "keys": list(keys)})
