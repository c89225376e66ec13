"""Lines of a dataset file, each capped in bytes before it is decoded.

An unbounded ``for line in fh`` holds a whole line in memory: a 2 GB line, or a pool that is a
symlink to ``/dev/zero``, reads until memory runs out. Only regular files are read (a device or a
named pipe never ends, or blocks), and a line over ``max_line_bytes`` (counted with its line
break) is skipped in chunks and reported, never held whole.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gdig_core.data.pairs import DataError, RowProblem

_BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 1 << 20
_HEAD_BYTES = 200

_KINDS = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a named pipe",
          stat.S_ISSOCK: "a socket"}


def check_regular_file(path: Path) -> None:
    """Raise DataError unless ``path`` (its symlinks followed) is a regular file one can read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DataError(path, None, None, f"cannot read: {err.strerror}") from None
    if stat.S_ISDIR(mode):
        raise DataError(path, None, None, "is a directory, not a file (a saved `datasets` dataset is format 'hf')")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS.items() if test(mode)), "not a file")
        raise DataError(path, None, None, f"is {kind}, not a regular file: a dataset must be a file on disk")


def open_dataset_file(path: Path) -> BinaryIO:
    """Open a regular file for reading bytes; a failure is a DataError naming it."""
    check_regular_file(path)
    try:
        return open(path, "rb")
    except OSError as err:
        raise DataError(path, None, None, f"cannot read: {err.strerror}") from None


def _capped_raw_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[bytes, int | None]]:
    """``(line, None)`` for each line of at most ``max_line_bytes``; ``(head, length)`` for a longer one."""
    while raw := fh.readline(max_line_bytes + 1):
        if len(raw) <= max_line_bytes:
            yield raw, None
            continue
        length = len(raw)
        head = raw[:_HEAD_BYTES]
        while not raw.endswith(b"\n") and (raw := fh.readline(_SKIP_CHUNK)):
            length += len(raw)
        yield head, length


def decoded_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, str | RowProblem]]:
    """Lines of a UTF-8 text file (line break stripped); an undecodable or over-long line comes back
    as a problem. A byte-order mark at the start of the file (Windows editors write one) is dropped."""
    with open_dataset_file(path) as fh:
        for number, (raw, too_long) in enumerate(_capped_raw_lines(fh, max_line_bytes), start=1):
            if too_long is not None:
                yield number, RowProblem(
                    str(path), number, None,
                    f"line longer than data.max_line_bytes={max_line_bytes} ({too_long} bytes)", repr(raw) + " ..."
                )
                continue
            raw = raw.rstrip(b"\r\n")
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, RowProblem(
                    str(path), number, None, f"undecodable bytes (not UTF-8) at byte {err.start}", repr(raw[:_HEAD_BYTES])
                )
