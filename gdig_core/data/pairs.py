"""The pair table: its schema, the errors that locate a bad row, and the Parquet and JSONL files
the stages exchange.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gdig_core.io import atomic_path, text_sha256

PAIR_FIELDS = ("id", "src_lang", "tgt_lang", "src", "tgt")


PAIR_SCHEMA = pa.schema([(name, pa.string()) for name in PAIR_FIELDS])

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


def table_sha256(table: pa.Table) -> str:
    """Content hash of a pair table (order-sensitive), for cache keys."""
    cols = [table.column(n).to_pylist() for n in PAIR_FIELDS]
    return text_sha256(*("\x1f".join(values) for values in zip(*cols, strict=True)))


def write_pairs(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_pairs(path: str | Path) -> pa.Table:
    from gdig_core.integrity import reading

    with reading(path, "pairs Parquet file"):
        table = pq.read_table(path)
    missing = [n for n in PAIR_FIELDS if n not in table.column_names]
    if missing:
        raise DataError(path, None, missing[0], "missing column")
    return table


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(writable_text(json.dumps(rec, ensure_ascii=False)) + "\n")


def sample_rows(n_rows: int, sample: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample (all rows when ``sample`` is None or large enough)."""
    if sample is None or sample >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:sample])
