"""The fuzzing harness's rules, shared by tests/*/test_fuzz_*.py.

Every generated input must end in one of two ways: accepted (bad rows quarantined and counted), or
refused with a message naming the file, line and field, or the key path (exit status 2 on the
command line). Never a traceback (any other exception fails the test, and hypothesis shrinks the
input), a hang (:data:`HANG_SECONDS` per input), a write outside the input's sandbox and the model
cache (an audit hook sees every file the process opens for writing, renames or removes), or a
config other than the file reads.

Budgets are fixed and the generation derandomized, so CI runs the same inputs every time:
:data:`EXAMPLES` per surface. :data:`COUNTS` collects what was tried, by surface; conftest.py
prints it at the end of the session (and writes it to ``$GDIG_FUZZ_COUNTS`` when set).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, settings

#: Generated inputs per surface: enough to meet every branch of a reader, a few seconds each.
EXAMPLES = int(os.environ.get("GDIG_FUZZ_EXAMPLES", "300"))
HANG_SECONDS = 20.0

FUZZ = settings(
    max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)

#: surface -> outcome -> count ("tried", "accepted", "quarantined", "refused", "tracebacks", "hangs", "escapes").
COUNTS: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))


def count(surface: str, outcome: str) -> None:
    COUNTS[surface][outcome] += 1


# ------------------------------------------------------------------ writes outside the sandbox

_ALLOWED: list[Path] | None = None
_ESCAPES: list[str] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_IGNORED = ("/dev/", "/proc/", "__pycache__")


def _is_write(event: str, args: tuple) -> list[object]:
    if event == "open":
        path, mode, flags = (list(args) + [None, None])[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        return [path] if writes else []
    if event in ("os.rename", "os.replace"):
        return list(args[:2])
    if event in ("os.link", "os.symlink"):  # (what it points at, the new name)
        return list(args[1:2])
    if event in ("os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "shutil.rmtree", "os.utime"):
        return list(args[:1])
    return []


def _audit(event: str, args: tuple) -> None:
    allowed = _ALLOWED
    if allowed is None:
        return
    for target in _is_write(event, args):
        if not isinstance(target, str | bytes | os.PathLike):
            continue  # a file descriptor: opened before
        text = os.fsdecode(target)
        if any(part in text for part in _IGNORED):
            continue
        path = Path(os.path.abspath(text))
        if not any(path == root or root in path.parents for root in allowed):
            _ESCAPES.append(f"{event} {text}")
            # Blocked, not only counted: a fuzzed output path may name any file on the machine.
            raise PermissionError(f"fuzzing harness: {event} outside the sandbox refused: {text}")


sys.addaudithook(_audit)


@contextmanager
def sandbox(base: Path, surface: str) -> Iterator[Path]:
    """A fresh directory for one input; counts the input, checks it for hangs and escapes."""
    global _ALLOWED
    root = Path(tempfile.mkdtemp(dir=base)).resolve()
    cache = Path(os.environ.get("GDIG_CACHE", Path.home() / ".cache" / "gdig")).resolve()
    _ESCAPES.clear()
    _ALLOWED = [root, cache]
    t0 = time.monotonic()
    try:
        yield root
        count(surface, "tried")
    except Exception:
        count(surface, "tried")  # a broken rule: counted, then hypothesis shrinks it
        raise
    finally:
        _ALLOWED = None
        elapsed = time.monotonic() - t0
        escapes = list(_ESCAPES)
    if elapsed > HANG_SECONDS:
        count(surface, "hangs")
        raise AssertionError(f"{surface}: one input took {elapsed:.1f} s (a hang?)")
    if escapes:
        count(surface, "escapes")
        raise AssertionError(f"{surface}: wrote outside its sandbox: {escapes[:5]}")


def traceback_guard(surface: str, error: BaseException) -> None:
    """An exception no rule allows: counted, then re-raised for hypothesis to shrink."""
    count(surface, "tracebacks")
    raise error


def write_counts(path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps({s: dict(c) for s, c in sorted(COUNTS.items())}, indent=2) + "\n")
