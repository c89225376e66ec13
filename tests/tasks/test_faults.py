"""Faults and retries (``tasks.runtime.faults``): CUDA-OOM batch halving and which errors are
worth another try."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from gdig_core.io import atomic_path, atomic_write_json
from gdig_core.write_faults import OutputWriteError, write_fault_message
from tasks.runtime.faults import TransientError, is_transient, with_oom_backoff

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "test-tiny.yaml"


def test_oom_halves_the_batch_until_it_fits() -> None:
    seen = []

    def run(bs: int) -> int:
        seen.append(bs)
        if bs > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return bs

    assert with_oom_backoff(run, 16) == 2 and seen == [16, 8, 4, 2]
    with pytest.raises(ValueError):
        with_oom_backoff(lambda bs: (_ for _ in ()).throw(ValueError("bug")), 16)

    def always(bs: int) -> int:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        with_oom_backoff(always, 4)


def test_transient_classification() -> None:
    assert is_transient(OSError("nfs hiccup")) and is_transient(TransientError("worker lost"))
    assert is_transient(ConnectionError()) and is_transient(TimeoutError())
    assert not is_transient(ValueError("a bug")) and not is_transient(KeyError("x"))


# ---------------------------------------------------------------- faults of the machine (issue 22)
# Fault-injecting wrappers, not a tmpfs: CI runs as root, where chmod does not stop a write, and a
# mount needs privileges CI need not have. Each injects the errno the kernel gives.



def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("."))


def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path: Path) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # what json and pyarrow raise: no path

    target = tmp_path / "out" / "summary.json"
    with pytest.raises(OutputWriteError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            full()
    message = str(info.value)
    assert message.startswith(f"cannot write {target}: No space left on device") and "disk is full" in message
    assert "\n" not in message and not target.exists() and _leftovers(tmp_path) == []


def test_a_serializer_message_without_a_path_is_named_too(tmp_path: Path) -> None:
    target = tmp_path / "factors.safetensors"
    with pytest.raises(OutputWriteError, match=f"cannot write {target}: No space left on device"):
        with atomic_path(target):
            raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                               'message: "No space left on device" })')
    with pytest.raises(ValueError, match="a bug"):  # anything else passes through as it is
        with atomic_path(target):
            raise ValueError("a bug")


def test_a_run_directory_made_read_only_mid_run(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    """prepare_data's Parquet goes in with os.replace: on a read-only disk the data stage fails with
    the output's path, and no pool.parquet a rerun could trust is left."""
    from gdig_core.config import DataConfig, DatasetSpec
    from gdig_core.data.prepare import prepare_data

    real_replace = os.replace

    def read_only(src, dst, *a, **kw):
        if str(dst).endswith("pool.parquet"):
            raise OSError(errno.EROFS, "Read-only file system", str(src))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", read_only)
    cfg = DataConfig(data_dir=str(data_dir), pool=DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=8),
                     seed=DatasetSpec(path="de-en/flores.dev.tsv", sample=2))
    with pytest.raises(OutputWriteError, match="Read-only file system; the file system is read-only"):
        prepare_data(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "pool.parquet").exists() and _leftovers(tmp_path / "out") == []


def test_a_stage_that_hits_a_full_disk_leaves_no_output_a_rerun_would_trust(tmp_path: Path) -> None:
    from tasks.caching.stage_cache import run_stage

    def fails(out: Path, work: Path) -> dict:
        (out / "part.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputWriteError, match="No space left on device"):
        run_stage(tmp_path, "probe", {}, "{}", [], fails)
    assert not list((tmp_path / "cas" / "probe").glob("*/_manifest.json"))
    assert [p.name for p in (tmp_path / "cas" / "probe").iterdir() if not p.name.endswith(".work")] == []
    done = run_stage(tmp_path, "probe", {}, "{}", [], lambda out, work: (out / "part.bin").write_bytes(b"all") and {})
    assert not done.cached and (Path(done.dir) / "part.bin").read_bytes() == b"all"


def _unwritable_lock(monkeypatch) -> None:
    """As root chmod stops nothing: make opening the run lock fail as for a user without permission."""
    real_open = os.open

    def denied(path, flags, *args, **kwargs):
        if str(path).endswith(".gdig.lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)


def test_an_unwritable_run_directory_is_one_line_before_prefect_starts(tmp_path, data_dir, monkeypatch, capsys) -> None:
    from gdig_cli.main import main

    run_dir = tmp_path / "run"
    if os.geteuid() == 0:
        _unwritable_lock(monkeypatch)
    else:  # a real read-only directory where chmod binds
        run_dir.mkdir()
        run_dir.chmod(0o500)
    try:
        rc = main(["run", str(TINY), "--set", f"data.data_dir={data_dir}", "--set", f"orchestration.run_dir={run_dir}"])
    finally:
        run_dir.chmod(0o700) if run_dir.exists() else None
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot write {run_dir}/.gdig.lock: Permission denied; no permission to write there" in err
    assert not (run_dir / ".prefect").exists()


def test_a_fault_mid_pipeline_ends_in_one_line_naming_the_file(tmp_path, data_dir, monkeypatch, capsys) -> None:
    """Prefect re-raises a failed stage inside its own errors: the last line still names the file."""
    from gdig_cli import run_cmd
    from gdig_cli.main import main
    from tasks.runtime import run_lock

    def pipeline(cfg, command, run_dir):
        try:
            atomic_write_json(run_dir / "cas" / "data" / "summary.json", {"a": 1})
        except OutputWriteError as err:
            raise RuntimeError("Flow run encountered an exception") from err

    monkeypatch.setattr(run_cmd, "execute_pipeline", pipeline)
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
                        if str(dst).endswith("summary.json") else real_replace(src, dst))
    run_dir = tmp_path / "run"
    rc = main(["run", str(TINY), "--set", f"data.data_dir={data_dir}", "--set", f"orchestration.run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(f"gdig: error: cannot write {run_dir}/cas/data/summary.json: No space left on device")
    assert run_lock.acquire(run_dir, "fail")  # released: another run may start
    run_lock.release(run_dir)


def test_write_fault_message_walks_the_chain() -> None:
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/run/x.json")
        except OSError as inner:
            raise RuntimeError("stage failed") from inner
    except RuntimeError as outer:
        assert write_fault_message(outer).startswith("cannot write /run/x.json: Read-only file system")
    assert write_fault_message(ValueError("no")) is None
    assert json.dumps(write_fault_message(OSError(errno.ENOSPC, "No space left on device", "/a")))
