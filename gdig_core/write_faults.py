"""A write the machine refused (disk full, read-only, no permission) as one message naming the path
and what to do.

Serializers report these faults without the file: pyarrow and json give ``[Errno 28] No space left
on device``, safetensors ``IoError(Os { code: 28, kind: StorageFull, ... })``. Wrapping the write
of each output (:func:`writing`) names it; :func:`write_fault_message` finds the fault in the
exception a failed pipeline ends with.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: What to do about each fault; "write elsewhere" is ``orchestration.run_dir`` for a pipeline run.
WHAT_TO_DO = {
    errno.ENOSPC: "the disk is full: free space on it (or write elsewhere) and run again; finished work is kept",
    errno.EDQUOT: "the disk quota is used up: free space (or write elsewhere) and run again; finished work is kept",
    errno.EFBIG: "the file is larger than this file system allows: write elsewhere",
    errno.EROFS: "the file system is read-only: make it writable (or write elsewhere) and run again",
    errno.EACCES: "no permission to write there: fix the directory's permissions or write elsewhere",
    errno.EPERM: "not permitted to write there: fix the directory's permissions or write elsewhere",
}
#: Faults of the storage itself; permission errors count only for the operations on the output path.
STORAGE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
_RUST_KINDS = {"StorageFull": errno.ENOSPC, "ReadOnlyFilesystem": errno.EROFS, "FilesystemQuotaExceeded": errno.EDQUOT}


class OutputWriteError(RuntimeError):
    """An output could not be written: ``path``, the ``errno`` and what to do, in one line."""

    def __init__(self, path: str | Path, code: int, detail: str | None = None):
        self.path, self.errno = str(path), code
        reason = os.strerror(code) + (f" ({detail})" if detail and os.strerror(code) not in detail else "")
        super().__init__(f"cannot write {path}: {reason}; {WHAT_TO_DO.get(code, 'check the disk and run again')}")


def fault_errno(exc: BaseException, permission: bool = False) -> int | None:
    """The errno of a storage fault ``exc`` reports, as an OSError or in a serializer's message."""
    codes = STORAGE_FAULTS + ((errno.EACCES, errno.EPERM) if permission else ())
    if isinstance(exc, OSError) and exc.errno in codes:
        return exc.errno
    text = str(exc)
    for kind, code in _RUST_KINDS.items():
        if kind in text and code in codes:
            return code
    return next((code for code in codes if os.strerror(code) in text), None)


@contextmanager
def writing(path: str | Path, permission: bool = True) -> Iterator[None]:
    """Re-raise a storage fault in the block as an OutputWriteError naming ``path``. ``permission``:
    a permission error counts too (the block only creates, renames or writes ``path``)."""
    try:
        yield
    except OutputWriteError:
        raise
    except Exception as err:  # noqa: BLE001 - serializers wrap OSError in their own types
        code = fault_errno(err, permission)
        if code is None:
            raise
        raise OutputWriteError(getattr(err, "filename", None) or path, code, str(err)[:200]) from err


def write_fault_message(exc: BaseException) -> str | None:
    """The one-line message of the first storage fault in ``exc``'s chain (cause and context), or None."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OutputWriteError):
            return str(node)
        code = fault_errno(node, permission=True)
        if code is not None and isinstance(node, OSError) and node.filename:
            return str(OutputWriteError(node.filename, code))
        node = node.__cause__ or node.__context__
    return None
