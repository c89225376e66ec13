"""Shard planning and verification: which rows a shard covers, where its output goes, and whether
an existing output is complete. Outputs get a sidecar ``<file>.done.json`` written after the file
itself, so "sidecar present and sizes agree" means the shard finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from gdig_core.io import atomic_write_json, file_sha256
from tasks import storage

ShardKind = Literal["curvature_stats", "lambda_stats", "scores"]
SUFFIX = {"curvature_stats": ".safetensors", "lambda_stats": ".safetensors", "scores": ".parquet"}


class ShardJob(BaseModel):
    """Everything one shard needs, as paths/URLs and hashes: the parameters of a shard flow run."""

    kind: ShardKind
    stage_key: str
    index: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(gt=0)
    #: The full GdigConfig as JSON-able dict (a worker rebuilds it).
    config: dict[str, Any]
    #: name -> path or fsspec URL: pool, checkpoint, factors, precond ...
    inputs: dict[str, str]
    output: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.index}"


def plan(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n_rows)) for s in range(0, n_rows, shard_size)]


def shard_output(root: str, kind: ShardKind, index: int) -> str:
    return storage.join(root, f"shard-{index:05d}{SUFFIX[kind]}")


def sidecar(location: str) -> str:
    return location + ".done.json"


def mark_done(local_file: Path, location: str, summary: dict[str, Any]) -> None:
    """Write the sidecar after the output is in place (its size and hash, and the summary)."""
    meta = {"size": local_file.stat().st_size, "sha256": file_sha256(local_file), "summary": summary}
    if storage.is_url(location):
        tmp = local_file.with_name(local_file.name + ".done.json")
        atomic_write_json(tmp, meta)
        storage.put_file(tmp, sidecar(location))
    else:
        atomic_write_json(sidecar(location), meta)


def read_done(location: str) -> dict[str, Any] | None:
    """The sidecar of a verified shard output, or None (missing, truncated, or mismatched)."""
    side = sidecar(location)
    try:
        if storage.is_url(side):
            import fsspec

            with fsspec.open(side, "r") as fh:
                meta = json.load(fh)
        else:
            meta = json.loads(storage.local(side).read_text(encoding="utf-8"))
        if not storage.exists(location) or storage.size(location) != meta["size"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return meta
