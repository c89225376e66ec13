"""File helpers shared by every stage: atomic writes and content hashes for cache keys. A write the
disk refuses is an ``OutputWriteError`` naming the output (``gdig_core.write_faults``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gdig_core.write_faults import writing

_CHUNK = 1 << 20


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; results on shared storage must get the usual umask-based mode.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash mid-write leaves no file at ``path`` that a later run could mistake for a result.
    """
    final = Path(path)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        # A full disk surfaces in the serializer's own words (no path): name the output.
        with writing(final, permission=False):
            yield tmp
        with writing(final):
            if tmp.is_file():
                os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            _remove_quietly(tmp)


def _remove_quietly(path: Path) -> None:
    """Remove a temporary that failed; on a read-only disk it stays (swept by the next run)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


def staging_dir(final: str | Path) -> Path:
    """A new hidden directory beside ``final`` to build a result in, then ``os.replace`` into place.

    mkdtemp makes it 0700; it gets the umask-based mode so the published result is readable.
    """
    final = Path(final)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        # The ``.tmp`` suffix marks it as a leftover to sweep should the process be killed.
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        os.chmod(tmp, 0o777 & ~(0o666 ^ _FILE_MODE))
    return tmp


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """Hash of a file, or of a directory's relative file names and contents (sorted)."""
    root = Path(path)
    if root.is_file():
        return file_sha256(root)
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(root)).encode())
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()


def text_sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
