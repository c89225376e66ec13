"""Shard planning and verification: which rows a shard covers, where its inputs and output go, and
whether an existing output is complete. Outputs get a sidecar ``<file>.done.json`` written after the file
itself with the file's size and content digest: "sidecar present and the file's bytes hash to
its digest" means the shard finished and nothing changed it since (a same-size bit flip too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from gdig_core.config import GdigConfig
from gdig_core.integrity import file_digest, stream_digest
from tasks.runtime.records import record
from tasks.sharding import storage

ShardKind = Literal["curvature_stats", "lambda_stats", "scores", "gradients"]
SUFFIX = {"curvature_stats": ".safetensors", "lambda_stats": ".safetensors", "scores": ".parquet",
          "gradients": ".parquet"}


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
    #: ``scores`` shards that also fill the gradient store: where that segment goes.
    grad_output: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.index}"


def plan(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n_rows)) for s in range(0, n_rows, shard_size)]


def shard_output(root: str, kind: ShardKind, index: int) -> str:
    return storage.join(root, f"shard-{index:05d}{SUFFIX[kind]}")


def shard_root(cfg: GdigConfig, work: Path, stage: str) -> str:
    """Shard outputs: the stage's work dir, or shared storage when workers run elsewhere."""
    if cfg.orchestration.shared_storage:
        return storage.join(cfg.orchestration.shared_storage, "shards", stage, work.name.removesuffix(".work"))
    root = work / "shards" / stage
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def stage_inputs(cfg: GdigConfig, files: dict[str, tuple[Path, str]]) -> dict[str, str]:
    """Locations workers can read, by name (uploaded to shared storage when it is a URL)."""
    return {name: storage.stage_in(path, cfg.orchestration.shared_storage, digest) for name, (path, digest) in files.items()}


def local_copies(locations: list[str], work: Path) -> list[Path]:
    """Local paths of finished shard outputs (fetched into the stage's work dir when remote)."""
    return [storage.fetch(loc, work / "fetched") for loc in locations]


def sidecar(location: str) -> str:
    return location + ".done.json"


def mark_done(local_file: Path, location: str, summary: dict[str, Any]) -> None:
    """Write the sidecar after the output is in place (its size and hash, and the summary)."""
    meta = {"size": local_file.stat().st_size, "digest": file_digest(local_file), "summary": summary}
    storage.write_text(sidecar(location), json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _digest(location: str) -> str:
    with storage.open_binary(location) as fh:
        return stream_digest(fh)


def shard_problem(location: str, digest: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """``(sidecar, None)`` for a finished, intact shard output; ``(None, why)`` otherwise
    (``why`` is None when the shard simply has not finished: no sidecar yet). ``digest`` False
    checks the size only: for large files whose bytes are verified when they are read."""
    side = sidecar(location)
    try:
        meta = json.loads(storage.read_text(side))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as err:
        return None, f"{side}: unreadable sidecar ({err})"
    if not isinstance(meta, dict) or not {"size", "digest"} <= set(meta):
        return None, f"{side}: no size and content digest recorded (written by an older gdig?)"
    try:
        if not storage.exists(location):
            return None, f"{location}: missing, though its sidecar says it finished"
        size = storage.size(location)
        if size != meta["size"]:
            return None, f"{location}: {size} bytes, its sidecar records {meta['size']}"
        if digest and _digest(location) != meta["digest"]:
            return None, f"{location}: content differs from the digest in its sidecar (corrupted in place)"
    except OSError as err:
        return None, f"{location}: cannot be read ({err})"
    return meta, None


def read_done(location: str, digest: bool = True) -> dict[str, Any] | None:
    """The sidecar of a verified shard output, or None (not finished, missing, truncated or
    corrupted). A corrupt shard is logged and recorded by name, so it is clear why it reruns."""
    meta, problem = shard_problem(location, digest)
    if problem is not None:
        note_corrupt(location, problem)
    return meta


def note_corrupt(location: str, problem: str) -> None:
    """Log and record a shard output that will be recomputed, and why."""
    from tasks.runtime import artifacts

    artifacts.logger().warning("shard output will be recomputed: %s", problem)
    record("shard_corrupt", "shards", location=location, reason=problem)
