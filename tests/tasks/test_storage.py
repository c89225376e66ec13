"""Shared storage for shard inputs and outputs (``tasks.sharding.storage``): local paths and fsspec
URLs through one folder abstraction."""

from __future__ import annotations

from pathlib import Path

from tasks.sharding import storage
from tasks.sharding.jobs import mark_done, read_done


def test_shared_storage_fsspec_url_round_trip(tmp_path: Path) -> None:
    """Remote shared storage (here fsspec's in-memory filesystem): staged inputs, atomic shard
    outputs with sidecars, and worker-side fetches."""
    root = "memory://gdig-test"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"w" * 64)
    staged = storage.stage_in(ckpt, root, "abc123")
    assert staged.startswith(root) and storage.exists(staged)
    assert storage.stage_in(ckpt, root, "abc123") == staged  # content-addressed: uploaded once
    local_copy = storage.fetch(staged, tmp_path / "cache")
    assert (local_copy / "model.safetensors").read_bytes() == b"w" * 64

    out = storage.join(root, "shards", "scores", "shard-00000.parquet")
    produced = tmp_path / "shard.parquet"
    produced.write_bytes(b"p" * 100)
    assert read_done(out) is None
    storage.put_file(produced, out)
    assert read_done(out) is None  # output without sidecar: not done
    mark_done(produced, out, {"n": 4})
    assert read_done(out)["summary"] == {"n": 4}
    assert storage.fetch(out, tmp_path / "cache").read_bytes() == b"p" * 100
    # Without shared storage, workers read the run directory itself.
    assert storage.stage_in(ckpt, None, "abc123") == str(ckpt.resolve())


def test_shared_storage_local_path_round_trip(tmp_path: Path) -> None:
    """The same operations on a plain path (a shared filesystem): copies land atomically in fresh
    directories, a file already under the shared root is read in place, and fetches need no copy."""
    shared = str(tmp_path / "shared")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"w" * 64)
    staged = storage.stage_in(ckpt, shared, "abc123")
    assert staged == str(tmp_path / "shared" / "blobs" / "abc123" / "ckpt")
    assert (Path(staged) / "model.safetensors").read_bytes() == b"w" * 64
    assert storage.stage_in(ckpt, shared, "abc123") == staged
    inside = tmp_path / "shared" / "table.parquet"
    inside.write_bytes(b"t")
    assert storage.stage_in(inside, shared, "def456") == str(inside)
    assert storage.fetch(staged, tmp_path / "cache") == Path(staged)

    out = storage.join(shared, "shards", "a", "shard-00000.parquet")
    produced = tmp_path / "shard.parquet"
    produced.write_bytes(b"p" * 100)
    storage.put_file(produced, out)
    assert storage.exists(out) and storage.size(out) == 100 and storage.read_bytes(out) == b"p" * 100
    assert storage.list_names(storage.join(shared, "shards", "a")) == ["shard-00000.parquet"]
    assert storage.list_names(storage.join(shared, "missing")) == []
    mark_done(produced, out, {"n": 4})
    assert read_done(out)["summary"] == {"n": 4}
    storage.put_file(out, out)  # written in place already: nothing to copy
    assert read_done(out)["summary"] == {"n": 4}
    storage.remove(out + ".done.json")
    storage.remove(out + ".done.json")  # gone already: fine
    assert read_done(out) is None
    assert not list(Path(shared).rglob("*.tmp"))
