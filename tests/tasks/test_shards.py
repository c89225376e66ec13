"""Shard planning and verification (``tasks.sharding.jobs``): which rows a shard covers, and the
sidecar that says an output finished and is intact."""

from __future__ import annotations

from pathlib import Path

from tasks.sharding.jobs import mark_done, plan, read_done


def test_plan_covers_every_row_once() -> None:
    assert plan(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan(8, 4) == [(0, 4), (4, 8)]
    assert plan(0, 4) == []


def test_shard_sidecar_verifies_output(tmp_path: Path) -> None:
    out = tmp_path / "shard-00000.parquet"
    assert read_done(str(out)) is None
    out.write_bytes(b"x" * 100)
    assert read_done(str(out)) is None  # no sidecar: the shard never finished
    mark_done(out, str(out), {"n": 3})
    assert read_done(str(out))["summary"] == {"n": 3}
    out.write_bytes(b"x" * 40 + b"y" * 10 + b"x" * 50)  # same size, changed in place
    assert read_done(str(out)) is None
    out.write_bytes(b"x" * 50)  # truncated after the fact
    assert read_done(str(out)) is None
    out.unlink()
    assert read_done(str(out)) is None
