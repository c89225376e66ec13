"""Shared storage for shard inputs and outputs: a plain path (a shared filesystem) or an fsspec URL.

Workers on other machines read the checkpoint, factors and pool from here and write their shard
outputs here. Writes are atomic: upload under a temporary name, then move into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from gdig_core.io import atomic_path


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def local(location: str) -> Path:
    return Path(location.removeprefix("file://"))


def join(root: str, *parts: str) -> str:
    if is_url(root):
        return "/".join([root.rstrip("/"), *parts])
    return str(local(root).joinpath(*parts))


def _fs(location: str):  # noqa: ANN202 - fsspec types are untyped
    import fsspec

    return fsspec.core.url_to_fs(location)


def exists(location: str) -> bool:
    if not is_url(location):
        return local(location).exists()
    fs, path = _fs(location)
    return fs.exists(path)


def size(location: str) -> int:
    if not is_url(location):
        return local(location).stat().st_size
    fs, path = _fs(location)
    return int(fs.size(path))


def list_names(location: str) -> list[str]:
    """Names of the entries directly under a directory location (none when it does not exist)."""
    if not is_url(location):
        root = local(location)
        return sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    fs, path = _fs(location)
    if not fs.exists(path):
        return []
    return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def remove(location: str) -> None:
    """Delete a file if it is there."""
    if not is_url(location):
        local(location).unlink(missing_ok=True)
        return
    fs, path = _fs(location)
    if fs.exists(path):
        fs.rm(path)


def read_bytes(location: str) -> bytes:
    if not is_url(location):
        return local(location).read_bytes()
    fs, path = _fs(location)
    return fs.cat_file(path)


def put_file(src: str | Path, location: str) -> None:
    """Copy a finished local file to ``location`` atomically."""
    if not is_url(location):
        dst = local(location)
        if Path(src).resolve() == dst.resolve():
            return
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return
    fs, path = _fs(location)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    fs.put_file(str(src), tmp)
    fs.mv(tmp, path)


def fetch(location: str, cache_root: str | Path) -> Path:
    """A local path holding ``location`` (downloaded once into ``cache_root`` when remote)."""
    if not is_url(location):
        return local(location)
    fs, path = _fs(location)
    dst = Path(cache_root) / hashlib.sha256(location.encode()).hexdigest()[:24] / Path(path).name
    if dst.exists():
        return dst
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    fs.get(path, str(tmp), recursive=fs.isdir(path))
    os.replace(tmp, dst)
    return dst


def stage_in(path: str | Path, shared_root: str | None, digest: str) -> str:
    """Make a local file or directory readable by remote workers; content-addressed by ``digest``.

    Without shared storage the run directory itself is assumed visible to the workers.
    """
    if shared_root is None or not is_url(shared_root) and Path(path).resolve().is_relative_to(local(shared_root).resolve()):
        return str(Path(path).resolve())
    target = join(shared_root, "blobs", digest[:24], Path(path).name)
    if exists(target):
        return target
    if not is_url(target):
        dst = local(target)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
        if Path(path).is_dir():
            shutil.copytree(path, tmp)
        else:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp)
        os.replace(tmp, dst)
        return target
    fs, remote = _fs(target)
    tmp = f"{remote}.{uuid.uuid4().hex[:8]}.tmp"
    fs.put(str(path), tmp, recursive=Path(path).is_dir())
    fs.mv(tmp, remote, recursive=Path(path).is_dir())
    return target
