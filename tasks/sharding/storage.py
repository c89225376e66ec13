"""Shared storage for shard inputs and outputs: a plain path (a shared filesystem) or an fsspec URL.

Workers on other machines read the checkpoint, factors and pool from here and write their shard
outputs here. Writes are atomic: upload under a temporary name, then move into place.

One abstraction for both kinds of location, after datatrove's ``DataFolder``: a
:class:`DataFolder` is an fsspec ``DirFileSystem`` rooted at a directory, over the local
filesystem for a path and over the URL's filesystem otherwise, so every operation below is written
once. The module-level functions take a file's full location (what shard jobs carry) and act
through the folder that holds it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from fsspec.core import url_to_fs
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def join(root: str, *parts: str) -> str:
    """The location of ``parts`` under ``root`` (a path stays a path, a URL a URL)."""
    if _is_url(root):
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root.removeprefix("file://")).joinpath(*parts))


def _temporary(name: str) -> str:
    """A hidden temporary name beside ``name`` (``.<name>.<hex>.tmp``: the sweep of killed runs'
    leftovers, ``tasks.caching.stage_cache.sweep_temporaries``, knows this pattern)."""
    head, _, tail = name.rpartition("/")
    return (f"{head}/" if head else "") + f".{tail}.{uuid.uuid4().hex[:8]}.tmp"


class DataFolder(DirFileSystem):
    """A directory on the local disk or behind an fsspec URL, as a filesystem rooted there: paths
    given to its methods are relative to it."""

    def __init__(self, location: str | Path) -> None:
        self.location = str(location).rstrip("/") or "/"
        fs, root = url_to_fs(self.location)
        super().__init__(path=root, fs=fs)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def url(self, name: str = "") -> str:
        """The full location of ``name`` in this folder."""
        return join(self.location, name) if name else self.location

    def local_path(self, name: str = "") -> Path | None:
        """Where ``name`` is on this machine's disk; None when the folder is remote."""
        return Path(self._join(name)) if self.is_local else None

    def names(self, name: str = "") -> list[str]:
        """Names of the entries directly under ``name`` (none when it is not a directory)."""
        if not self.isdir(name):
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.ls(name, detail=False))

    def put_atomic(self, src: str | Path, name: str) -> None:
        """Copy a finished local file or directory to ``name``: under a temporary name first, then
        moved into place, so no reader ever sees half of it."""
        recursive = Path(src).is_dir()
        dst = self.local_path(name)
        if dst is not None and Path(src).resolve() == dst.resolve():
            return  # written in place already
        tmp = _temporary(name)
        if self.is_local:
            self.makedirs(self._parent(name) if "/" in name else "", exist_ok=True)
        self.put(str(src), tmp, recursive=recursive)
        self.mv(tmp, name, recursive=recursive)

    def write_text(self, name: str, text: str) -> None:
        """Write ``text`` to ``name`` atomically."""
        tmp = _temporary(name)
        if self.is_local:
            self.makedirs(self._parent(name) if "/" in name else "", exist_ok=True)
        self.pipe_file(tmp, text.encode("utf-8"))
        self.mv(tmp, name)

    def fetch(self, name: str, cache_root: str | Path) -> Path:
        """A local path holding ``name``: itself when the folder is local, else downloaded once
        into ``cache_root``."""
        here = self.local_path(name)
        if here is not None:
            return here
        location = self.url(name)
        dst = Path(cache_root) / hashlib.sha256(location.encode()).hexdigest()[:24] / Path(self._join(name)).name
        if dst.exists():
            return dst
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        self.get(name, str(tmp), recursive=self.isdir(name))
        os.replace(tmp, dst)
        return dst


def folder_of(location: str) -> tuple[DataFolder, str]:
    """The folder holding the file at ``location``, and the file's name in it."""
    if _is_url(location):
        parent, _, name = location.rstrip("/").rpartition("/")
        return DataFolder(parent), name
    path = Path(location.removeprefix("file://"))
    return DataFolder(str(path.parent)), path.name


def exists(location: str) -> bool:
    folder, name = folder_of(location)
    return folder.exists(name)


def size(location: str) -> int:
    folder, name = folder_of(location)
    return int(folder.size(name))


def list_names(location: str) -> list[str]:
    """Names of the entries directly under a directory location (none when it does not exist)."""
    return DataFolder(location).names()


def remove(location: str) -> None:
    """Delete a file if it is there."""
    folder, name = folder_of(location)
    if folder.exists(name):
        folder.rm_file(name)


def read_bytes(location: str) -> bytes:
    folder, name = folder_of(location)
    return folder.cat_file(name)


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def write_text(location: str, text: str) -> None:
    """Write a small text file (a sidecar) atomically."""
    folder, name = folder_of(location)
    folder.write_text(name, text)


def open_binary(location: str):  # noqa: ANN201 - an fsspec file object
    folder, name = folder_of(location)
    return folder.open(name, "rb")


def put_file(src: str | Path, location: str) -> None:
    """Copy a finished local file to ``location`` atomically (nothing to do when it is that file)."""
    folder, name = folder_of(location)
    folder.put_atomic(src, name)


def local_path(location: str) -> Path | None:
    """Where ``location`` is on this machine's disk; None for a remote URL."""
    folder, name = folder_of(location)
    return folder.local_path(name)


def fetch(location: str, cache_root: str | Path) -> Path:
    """A local path holding ``location`` (downloaded once into ``cache_root`` when remote)."""
    folder, name = folder_of(location)
    return folder.fetch(name, cache_root)


def stage_in(path: str | Path, shared_root: str | None, digest: str) -> str:
    """Make a local file or directory readable by remote workers; content-addressed by ``digest``.

    Without shared storage the run directory itself is assumed visible to the workers, and so is a
    file already under a local shared root.
    """
    resolved = str(Path(path).resolve())
    if shared_root is None:
        return resolved
    shared = DataFolder(shared_root)
    root = shared.local_path()
    if root is not None and Path(resolved).is_relative_to(root.resolve()):
        return resolved
    name = f"blobs/{digest[:24]}/{Path(path).name}"
    if not shared.exists(name):
        shared.put_atomic(path, name)
    return shared.url(name)
