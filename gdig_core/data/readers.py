"""Readers and validation of translation pairs, into one Parquet schema.

Every dataset becomes a pyarrow table with ``PAIR_SCHEMA`` (id, src_lang, tgt_lang, src, tgt).
A bad row either stops the run with a ``DataError`` naming file, line and field, or, for the pool
when the config allows it, goes to the quarantine list with its reason; nothing is dropped silently.
One reader per input format (TSV/JSONL/Parquet/plain parallel text) shares the validation and
quarantine rules, then dedup and sampling.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gdig_core.config import LANGUAGE_NAMES, DataConfig, DatasetSpec, resolve_data_path
from gdig_core.data.line_reader import check_regular_file, decoded_lines
from gdig_core.data.pairs import PAIR_SCHEMA, DataError, RowProblem, table_sha256
from gdig_core.data.text_checks import text_problem
from gdig_core.io import text_sha256

Role = Literal["pool", "seed", "test"]


@dataclass
class LoadResult:
    table: pa.Table
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    #: id -> noise label, when the file carries ``noise`` labels (see gdig_core.data.noise).
    noise_labels: dict[str, str] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return table_sha256(self.table)


RawRow = tuple[int | None, "dict[str, Any] | RowProblem"]


#: What readers called without a config (``gdig_core.weak_mt``) cap a line at.
DEFAULT_MAX_LINE_BYTES = DataConfig().max_line_bytes


def _read_jsonl(path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[RawRow]:
    for number, line in decoded_lines(path, max_line_bytes):
        if isinstance(line, RowProblem):
            yield number, line
            continue
        if not line.strip():
            yield number, RowProblem(str(path), number, None, "empty line", line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, RowProblem(str(path), number, None, f"broken JSON: {err.msg} at column {err.colno}", line)
            continue
        if not isinstance(obj, dict):
            yield number, RowProblem(str(path), number, None, "a JSON line must be an object", line)
            continue
        yield number, obj


def _read_tsv(path: Path, max_line_bytes: int) -> Iterator[RawRow]:
    for number, line in decoded_lines(path, max_line_bytes):
        if isinstance(line, RowProblem):
            yield number, line
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            yield number, RowProblem(str(path), number, None, f"expected 2 tab-separated columns, found {len(cols)}", line)
            continue
        yield number, {"src": cols[0], "tgt": cols[1]}


def _read_parallel(src_path: Path, tgt_path: Path, max_line_bytes: int) -> Iterator[RawRow]:
    src_lines = list(decoded_lines(src_path, max_line_bytes))
    tgt_lines = list(decoded_lines(tgt_path, max_line_bytes))
    if len(src_lines) != len(tgt_lines):
        # A count mismatch means every pair after the first gap is misaligned: never recoverable.
        raise DataError(
            tgt_path, None, None, f"has {len(tgt_lines)} lines but {src_path} has {len(src_lines)}: not line-aligned"
        )
    for (number, src), (_, tgt) in zip(src_lines, tgt_lines, strict=True):
        for side in (src, tgt):
            if isinstance(side, RowProblem):
                yield number, side
                break
        else:
            yield number, {"src": src, "tgt": tgt}


def _read_table_rows(table: pa.Table, path: Path) -> Iterator[RawRow]:
    number = 0
    for batch in table.to_batches(max_chunksize=4096):
        try:
            rows = batch.to_pylist()
        except (UnicodeDecodeError, pa.ArrowException) as err:  # a string column holding invalid UTF-8
            raise DataError(path, None, None, f"cannot read rows {number + 1}-{number + batch.num_rows}: {err}") from None
        for row in rows:
            number += 1
            yield number, row


def _raw_rows(spec: DatasetSpec, path: Path, tgt_path: Path | None, max_line_bytes: int) -> Iterator[RawRow]:
    fmt = spec.format if spec.format != "auto" else detect_format(path, tgt_path)
    if fmt == "jsonl":
        return _read_jsonl(path, max_line_bytes)
    if fmt == "tsv":
        return _read_tsv(path, max_line_bytes)
    if fmt == "parallel":
        if tgt_path is None:
            raise DataError(path, None, None, "parallel text needs tgt_path")
        return _read_parallel(path, tgt_path, max_line_bytes)
    if fmt == "parquet":
        check_regular_file(path)
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise DataError(path, None, None, f"cannot read Parquet: {err}") from None
        return _read_table_rows(table, path)
    if fmt == "hf":
        if not path.is_dir():
            raise DataError(path, None, None, "format 'hf' reads a directory written by `datasets` save_to_disk")
        import datasets  # local import: only this format needs the datasets package

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:
            raise DataError(path, None, None, f"cannot load a saved `datasets` dataset: {err}") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(path, None, None, f"DatasetDict without a 'train' split (has {list(ds)})")
            ds = ds["train"]
        return _read_table_rows(ds.data.table, path)
    raise DataError(path, None, "format", f"unknown format {fmt!r}")


def detect_format(path: Path, tgt_path: Path | None = None) -> str:
    if tgt_path is not None:
        return "parallel"
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataError(path, None, "format", "cannot tell the format from the name; set format explicitly")


def pair_id(src_lang: str, tgt_lang: str, src: str, tgt: str) -> str:
    """Stable content id for rows that come without one."""
    return "h" + text_sha256(src_lang, tgt_lang, src, tgt)[:16]


def _validate_row(
    obj: dict[str, Any],
    path: Path,
    line: int | None,
    spec: DatasetSpec,
    data_cfg: DataConfig,
    known_langs: set[str],
    role: Role,
) -> dict[str, str] | RowProblem:
    raw = json.dumps(obj, ensure_ascii=False, default=str)
    out: dict[str, str] = {}
    for name in ("src", "tgt"):
        value = obj.get(name)
        if name not in obj or value is None:
            return RowProblem(str(path), line, name, "missing", raw)
        if not isinstance(value, str):
            return RowProblem(str(path), line, name, f"must be a string, got {type(value).__name__}", raw)
        if not value.strip():
            return RowProblem(str(path), line, name, "empty", raw)
        bad_char = text_problem(value)
        if bad_char is not None:
            return RowProblem(str(path), line, name, bad_char, raw)
        # Test sets are evaluated whole: the length limit guards training, not evaluation.
        if role != "test" and len(value) > data_cfg.max_chars:
            return RowProblem(str(path), line, name, f"longer than max_chars={data_cfg.max_chars} ({len(value)})", raw)
        out[name] = value
    defaults = {"src_lang": spec.src_lang or data_cfg.src_lang, "tgt_lang": spec.tgt_lang or data_cfg.tgt_lang}
    for name, default in defaults.items():
        value = obj.get(name, default)
        if value is None:
            value = default
        if not isinstance(value, str) or not value:
            return RowProblem(str(path), line, name, "must be a non-empty language code", raw)
        if value not in known_langs:
            return RowProblem(str(path), line, name, f"unknown language code {value!r}", raw)
        out[name] = value
    given_id = obj.get("id")
    if given_id is not None and (not isinstance(given_id, str | int) or isinstance(given_id, bool)):
        return RowProblem(str(path), line, "id", f"must be a string or integer, got {type(given_id).__name__}", raw)
    for name in ("id", "noise"):  # kept as text beside the pair: the same characters as its text
        value = obj.get(name)
        bad_char = text_problem(value) if isinstance(value, str) else None
        if bad_char is not None:
            return RowProblem(str(path), line, name, bad_char, raw)
    if isinstance(obj.get("noise"), str):
        out["noise"] = obj["noise"]  # label from `gdig data corrupt`, kept beside the table
    if given_id is not None and str(given_id):
        out["id"] = str(given_id)
    elif role == "test":
        # Test sets may repeat a sentence; every line is scored, so ids are positional.
        out["id"] = f"{path.name}:{line}"
    else:
        out["id"] = pair_id(out["src_lang"], out["tgt_lang"], out["src"], out["tgt"])
    return out


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (0, 50, 90, 99, 100)}


def read_dataset(
    spec: DatasetSpec,
    data_cfg: DataConfig,
    role: Role,
    language_names: dict[str, str] | None = None,
) -> LoadResult:
    """Read one dataset into the pair schema, validating every row.

    Pool rows may be quarantined (``data_cfg.quarantine_pool``); seed and test rows never are:
    any problem there raises ``DataError``. Exact duplicate pairs (same src, tgt and languages)
    are removed and counted when ``data_cfg.dedup`` is on (never in a test set, which is
    evaluated whole, without the length limit); a repeated id with different text is
    an error (ids must identify pairs). ``spec.sample`` takes a seeded, order-preserving sample.
    """
    path = resolve_data_path(data_cfg, spec.path)
    tgt_path = resolve_data_path(data_cfg, spec.tgt_path) if spec.tgt_path else None
    for p in (path, tgt_path):
        if p is not None and not p.exists():
            raise DataError(p, None, None, "no such file or directory")
    known_langs = set(LANGUAGE_NAMES) | set(language_names or {})
    quarantine_ok = role == "pool" and data_cfg.quarantine_pool

    rows: list[dict[str, str]] = []
    problems: list[RowProblem] = []
    seen_pairs: set[tuple[str, str, str, str]] = set()
    seen_ids: dict[str, int | None] = {}
    duplicates = 0
    rows_read = 0
    for line, item in _raw_rows(spec, path, tgt_path, data_cfg.max_line_bytes):
        rows_read += 1
        if isinstance(item, dict):
            item = _validate_row(item, path, line, spec, data_cfg, known_langs, role)
        if isinstance(item, dict):
            key = (item["src_lang"], item["tgt_lang"], item["src"], item["tgt"])
            if data_cfg.dedup and role != "test" and key in seen_pairs:
                duplicates += 1
                continue
            if item["id"] in seen_ids:
                item = RowProblem(
                    str(path), line, "id", f"duplicate id ({item['id']!r}, first at line {seen_ids[item['id']]})",
                    json.dumps(item, ensure_ascii=False),
                )
            else:
                seen_pairs.add(key)
                seen_ids[item["id"]] = line
                rows.append(item)
                continue
        if not quarantine_ok:
            raise item.as_error()
        problems.append(item)

    filtered = 0
    if spec.max_chars is not None:
        kept_rows = [r for r in rows if len(r["src"]) <= spec.max_chars and len(r["tgt"]) <= spec.max_chars]
        filtered, rows = len(rows) - len(kept_rows), kept_rows
    if not rows:
        raise DataError(path, None, None, f"no valid pairs: {_problem_summary(problems, rows_read, filtered)}")
    if spec.sample is not None and spec.sample < len(rows):
        keep = np.sort(np.random.default_rng(data_cfg.sample_seed).permutation(len(rows))[: spec.sample])
        rows = [rows[i] for i in keep]

    table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    stats = {
        "file": str(path) + (f" + {tgt_path}" if tgt_path else ""),
        "role": role,
        "rows_read": rows_read,
        "rows_kept": table.num_rows,
        "duplicates_removed": duplicates,
        "filtered_by_length": filtered,
        "quarantined": len(problems),
        "quarantined_by_reason": dict(Counter(_reason_key(p.reason) for p in problems)),
        "languages": dict(Counter(f"{r['src_lang']}-{r['tgt_lang']}" for r in rows)),
        "src_chars": _percentiles([len(r["src"]) for r in rows]),
        "tgt_chars": _percentiles([len(r["tgt"]) for r in rows]),
        "sampled": spec.sample,
        "content_hash": table_sha256(table),
    }
    labels = {r["id"]: r["noise"] for r in rows if "noise" in r}
    if labels:
        stats["noise_labels"] = dict(Counter(labels.values()))
    return LoadResult(
        table=table, quarantine=[p.as_record() for p in problems], stats=stats, noise_labels=labels
    )


def _problem_summary(problems: list[RowProblem], rows_read: int, too_long: int = 0) -> str:
    """Why every row was rejected: counts per reason and the first example of each."""
    longer = f"; {too_long} longer than the dataset's max_chars" if too_long else ""
    if not problems:
        return f"{rows_read} rows read, none of them a valid pair{longer or ' (an empty file?)'}"
    first: dict[str, RowProblem] = {}
    counts: Counter[str] = Counter()
    for p in problems:
        key = _reason_key(p.reason)
        counts[key] += 1
        first.setdefault(key, p)
    parts = [
        f"{n} x {key} (e.g. line {first[key].line}"
        + (f", field '{first[key].field}'" if first[key].field else "") + f": {first[key].reason})"
        for key, n in counts.most_common()
    ]
    return f"{len(problems)} rows quarantined: " + "; ".join(parts) + longer


def _reason_key(reason: str) -> str:
    """Group reasons by kind (drop the per-row detail after the first colon or parenthesis)."""
    return reason.split(":")[0].split(" (")[0].split(" at byte")[0]
