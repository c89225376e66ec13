"""Names that become path components (test sets, methods, runs) and paths that must stay inside
a directory.

A config can arrive from a stranger (a shared YAML file, a deployment parameter typed into the
Prefect UI), so a name such as ``../../tmp/x`` must be refused before anything is written, and
every output path is checked again once resolved (symlinks included).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

#: Letters, digits, ``.``, ``_``, ``+`` and ``-``; starting with a letter or digit (so never
#: ``.`` or ``..`` or a hidden file); at most 64 characters.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class PathEscapeError(ValueError):
    """A path that would leave the directory it must stay in."""


def check_safe_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it can be used as one path component; raise ValueError saying why not."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a safe name: use 1-64 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit (it becomes a directory name)"
        )
    return value


def _safe(value: str) -> str:
    return check_safe_name(value)


#: A ``str`` field that becomes a path component.
SafeName = Annotated[str, AfterValidator(_safe)]


def inside(root: str | Path, *parts: str) -> Path:
    """``root / parts``, resolved, after checking that it stays inside ``root`` (resolved too)."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise PathEscapeError(f"{Path(root).joinpath(*parts)} resolves to {target}, outside {base}")
    return target
