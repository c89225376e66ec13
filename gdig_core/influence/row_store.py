"""Per-candidate results keyed by content, so a grown, shrunk or reordered pool recomputes only
its new rows.

A candidate's scores, loss, token count, feature and projected gradient depend only on its text
(languages, source, target) and on the run's context (model, factors, seeds, prompt, scoring
settings), never on its row number or id. Results are therefore stored in segments whose rows
are identified by the candidate's content key (:func:`content_key`); which context a segment
belongs to is the directory it is in (the caller keys that). For a pool:

- :func:`unique_rows` gives its rows once per content key, with the key as ``id`` (what scoring
  passes see), in pool order;
- :func:`assemble` writes the stored rows of every pool row, in pool order and under the pool's
  own ids, into the run's score files. Reused rows are copied, never recomputed, so their values
  are identical to the run that computed them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gdig_core.io import atomic_path, text_sha256

#: The pair fields a candidate's results depend on (the id is a name, not content).
CONTENT_FIELDS = ("src_lang", "tgt_lang", "src", "tgt")
META_SCORE_PATH = b"gdig.score_path"


def content_key(src_lang: str, tgt_lang: str, src: str, tgt: str) -> str:
    """128-bit content key of a pair (hex): equal texts, equal keys, whatever the id or row."""
    return "k" + text_sha256(src_lang, tgt_lang, src, tgt)[:32]


def content_keys(table: pa.Table) -> list[str]:
    """The content key of every row of a pair table, in row order."""
    cols = [table.column(name).to_pylist() for name in CONTENT_FIELDS]
    return [content_key(*row) for row in zip(*cols, strict=True)]


def unique_rows(table: pa.Table, keys: Sequence[str], wanted: set[str] | None = None) -> pa.Table:
    """One row per content key (its first occurrence, in table order) with ``id`` set to the key;
    only keys in ``wanted`` when given."""
    seen: set[str] = set()
    take: list[int] = []
    for i, key in enumerate(keys):
        if key not in seen and (wanted is None or key in wanted):
            seen.add(key)
            take.append(i)
    rows = table.take(pa.array(take, pa.int64()))
    return rows.set_column(rows.schema.get_field_index("id"), "id", pa.array([keys[i] for i in take], pa.string()))


def segment_name(keys: Sequence[str], suffix: str = ".parquet") -> str:
    """A segment's file name, from the content keys it holds: the same rows, the same name."""
    return "seg-" + text_sha256(*keys)[:24] + suffix


class _SegmentCache:
    """The last few segments read (a pool in order touches one or two per output file)."""

    def __init__(self, read: Callable[[str], pa.Table], size: int = 4) -> None:
        self.read, self.size = read, size
        self.tables: OrderedDict[str, pa.Table] = OrderedDict()

    def get(self, location: str) -> pa.Table:
        if location in self.tables:
            self.tables.move_to_end(location)
        else:
            self.tables[location] = self.read(location)
            if len(self.tables) > self.size:
                self.tables.popitem(last=False)
        return self.tables[location]


def assemble(
    ids: Sequence[str],
    keys: Sequence[str],
    index: Mapping[str, tuple[str, int]],
    read: Callable[[str], pa.Table],
    out_dir: str | Path,
    rows_per_file: int,
    metadata: Mapping[bytes, bytes] | None = None,
) -> list[Path]:
    """Write the stored result of every pool row (``ids[i]`` with content ``keys[i]``), in pool
    order, as ``shard-00000.parquet``... of ``rows_per_file`` rows, each under its pool id.

    ``index`` maps a content key to (segment location, row); ``read`` loads a segment (verified
    by the caller). Every segment must share one schema (one context); ``metadata`` is added to
    it. A key missing from the index is a KeyError naming it.
    """
    missing = [k for k in keys if k not in index]
    if missing:
        raise KeyError(f"{len(missing)} pool rows have no stored result, e.g. {missing[0]}")
    cache = _SegmentCache(read)
    out_dir = Path(out_dir)
    written: list[Path] = []
    for part, start in enumerate(range(0, len(keys), rows_per_file)):
        chunk = range(start, min(start + rows_per_file, len(keys)))
        pieces: list[pa.Table] = []
        order = np.empty(len(chunk), dtype=np.int64)
        by_segment: dict[str, list[int]] = {}
        for j, i in enumerate(chunk):
            by_segment.setdefault(index[keys[i]][0], []).append(j)
        filled = 0
        schema: pa.Schema | None = None
        for location, positions in by_segment.items():
            table = cache.get(location)
            schema = schema or table.schema
            rows = [index[keys[chunk[j]]][1] for j in positions]
            pieces.append(table.replace_schema_metadata(None).take(pa.array(rows, pa.int64())))
            order[positions] = np.arange(filled, filled + len(positions))
            filled += len(positions)
        assert schema is not None
        table = pa.concat_tables(pieces).take(pa.array(order))
        table = table.set_column(table.schema.get_field_index("id"), "id",
                                 pa.array([str(ids[i]) for i in chunk], pa.string()))
        table = table.replace_schema_metadata({**(schema.metadata or {}), **(metadata or {})})
        path = out_dir / f"shard-{part:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        written.append(path)
    return written
