"""How a bad dataset row or file is reported: a fatal ``DataError`` naming file, line and field, or a
``RowProblem`` the pool's quarantine keeps (``gdig_core.data``, ``gdig_core.line_reader``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Characters of a bad row kept in ``quarantine.jsonl``: enough to find and read the row, while a
#: 5 MB line no longer makes a 5 MB quarantine record.
RAW_EXCERPT_CHARS = 1000


class DataError(ValueError):
    """A fatal data problem, located by file, line (1-based, None for whole-file) and field."""

    def __init__(self, path: str | Path, line: int | None, field_name: str | None, reason: str):
        self.path, self.line, self.field, self.reason = str(path), line, field_name, reason
        where = self.path + (f", line {line}" if line is not None else "")
        what = f"field '{field_name}': " if field_name else ""
        super().__init__(f"{where}: {what}{reason}")


def writable_text(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def raw_excerpt(raw: str, limit: int = RAW_EXCERPT_CHARS) -> str:
    """The start of a bad row for its quarantine record, saying how long the whole row was."""
    raw = writable_text(raw)
    return raw if len(raw) <= limit else f"{raw[:limit]}… ({len(raw)} characters in all)"


@dataclass
class RowProblem:
    """One bad row: where it is, what is wrong, and the raw text for the quarantine file."""

    path: str
    line: int | None
    field: str | None
    reason: str
    raw: str

    def as_error(self) -> DataError:
        return DataError(self.path, self.line, self.field, self.reason)

    def as_record(self) -> dict[str, Any]:
        return {"file": writable_text(self.path), "line": self.line, "field": self.field,
                "reason": writable_text(self.reason), "raw": raw_excerpt(self.raw)}
