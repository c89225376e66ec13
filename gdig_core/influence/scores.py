"""Per-shard candidate score files (Parquet): the one writer and reader.

One row per candidate. Columns:

- ``id`` (string), ``ok`` (bool), ``bad_reason`` (string, null when ok)
- ``loss`` (float64): mean cross-entropy per target token, whatever the scoring loss
  normalisation (null when not finite); ``n_tokens`` (int32): target tokens of the candidate
- ``benefit_mean``, ``benefit_frac_pos``, ``benefit_min``, ``benefit_max`` (float64) over the M seeds
- ``top_helped`` / ``top_harmed`` (list<string>, seed ids) with ``top_helped_values`` /
  ``top_harmed_values`` (list<float64>): the k seeds with the largest / smallest benefit
- ``benefit`` (list<float32> of length M; null when M > ``full_benefit_max_seeds`` or the row is bad)
- ``feature`` (list<float32> of length feature_dim; null when the row is bad)
- ``grad_norm`` (float64): Frobenius norm of the candidate's loss gradient over the tracked layers
- per score variant v (gdig_core.influence.variants; listed in the metadata under ``gdig.variants``, the
  first being the one the ``benefit*`` columns hold): ``{v}:mean``, ``{v}:frac_pos``, ``{v}:min``

Sign convention: ``benefit[s] = b_s(z) = sum_layers <V_s, grad_W loss(z)>`` with
``V_s = H^-1 grad_W loss(s)``; positive means a gradient step on z lowers the loss of seed s.

Seed ids live in the Parquet schema metadata under ``gdig.seed_ids`` (a JSON list), so a file is
self-describing. Files are written through :func:`gdig_core.io.atomic_path`: a file that exists
under its final name was closed successfully.

Length: the score shard format (schema, metadata), its writer and its reader with the variant
columns, kept in one module so the format is defined in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gdig_core.io import atomic_path

FORMAT_VERSION = "1"
META_SEED_IDS = b"gdig.seed_ids"
META_FEATURE_DIM = b"gdig.feature_dim"
META_BENEFIT_STORED = b"gdig.benefit_stored"
META_VERSION = b"gdig.score_format"
META_VARIANTS = b"gdig.variants"
VARIANT_STATS = ("mean", "frac_pos", "min")

#: Every per-candidate table starts with these: the row's id, whether it scored, why not, and its
#: loss and target-token count (the score shards here and the gradient store's segments).
ROW_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("ok", pa.bool_(), nullable=False),
    pa.field("bad_reason", pa.string()),
    pa.field("loss", pa.float64()),
    pa.field("n_tokens", pa.int32()),
]

SCHEMA_FIELDS: list[pa.Field] = [
    *ROW_FIELDS,
    pa.field("benefit_mean", pa.float64()),
    pa.field("benefit_frac_pos", pa.float64()),
    pa.field("benefit_min", pa.float64()),
    pa.field("benefit_max", pa.float64()),
    pa.field("top_helped", pa.list_(pa.string())),
    pa.field("top_helped_values", pa.list_(pa.float64())),
    pa.field("top_harmed", pa.list_(pa.string())),
    pa.field("top_harmed_values", pa.list_(pa.float64())),
    pa.field("benefit", pa.list_(pa.float32())),
    pa.field("feature", pa.list_(pa.float32())),
    pa.field("grad_norm", pa.float64()),
]
COLUMNS = [f.name for f in SCHEMA_FIELDS]


def variant_column(variant: str, stat: str) -> str:
    return f"{variant}:{stat}"


def score_schema(
    seed_ids: Sequence[str], feature_dim: int, benefit_stored: bool, variants: Sequence[str] = ()
) -> pa.Schema:
    """The Arrow schema of a score shard, with the seed ids, sizes and variants in its metadata."""
    meta = {
        META_SEED_IDS: json.dumps(list(seed_ids)).encode(),
        META_FEATURE_DIM: str(int(feature_dim)).encode(),
        META_BENEFIT_STORED: b"1" if benefit_stored else b"0",
        META_VERSION: FORMAT_VERSION.encode(),
        META_VARIANTS: json.dumps(list(variants)).encode(),
    }
    extra = [pa.field(variant_column(v, stat), pa.float64()) for v in variants for stat in VARIANT_STATS]
    return pa.schema([*SCHEMA_FIELDS, *extra], metadata=meta)


@dataclass
class ScoreBatch:
    """Scores of B candidates against M seeds, as produced by one scoring batch.

    ``benefit`` is [B, M] and ``features`` [B, d]; rows where ``ok`` is False may hold anything
    (they are written as nulls/NaN). ``bad_reason[i]`` is None for ok rows.
    """

    ids: list[str]
    ok: np.ndarray  # bool [B]
    bad_reason: list[str | None]
    loss: np.ndarray  # float64 [B]
    n_tokens: np.ndarray  # int [B]
    benefit: np.ndarray  # float32 [B, M]
    features: np.ndarray  # float32 [B, d]
    grad_norm: np.ndarray | None = None  # float64 [B]
    #: variant name -> its benefit [B, M] (summaries only are stored; see score_schema)
    variant_benefit: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _top_k_idx(values: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Column indices of the k largest (or smallest) entries of each row, best first: [n, k]."""
    keyed = -values if largest else values
    if k < values.shape[1]:
        part = np.argpartition(keyed, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(values.shape[1]), values.shape).copy()
    order = np.argsort(np.take_along_axis(keyed, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _float_list(values: list) -> list:
    return [v if np.isfinite(v) else None for v in values]


def _list_column(mat: np.ndarray, valid: np.ndarray, typ: pa.DataType) -> pa.Array:
    """Rows of ``mat`` [n, w] as a list<typ> column built from numpy (no per-float Python
    objects); rows where ``valid`` is False are null."""
    lengths = np.where(valid, mat.shape[1], 0)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    values = pa.array(np.ascontiguousarray(mat[valid]).reshape(-1), type=typ)
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(~valid))


def _batch_table(batch: ScoreBatch, schema: pa.Schema, seed_ids: Sequence[str], top_k: int) -> pa.Table:
    n = len(batch)
    m = len(seed_ids)
    stored = schema.metadata[META_BENEFIT_STORED] == b"1"
    d = int(schema.metadata[META_FEATURE_DIM])
    ben = np.asarray(batch.benefit, dtype=np.float64).reshape(n, m)
    feats = np.asarray(batch.features, dtype=np.float32).reshape(n, d)
    ok = np.asarray(batch.ok, dtype=bool).reshape(n)
    k = min(top_k, m)
    summarised = ok & (m > 0)
    safe = np.where(summarised[:, None], ben, 0.0) if m > 0 else np.zeros((n, 1))
    seeds = np.asarray(seed_ids, dtype=object)
    helped = _top_k_idx(safe, k, largest=True) if m > 0 else np.zeros((n, 0), dtype=int)
    harmed = _top_k_idx(safe, k, largest=False) if m > 0 else np.zeros((n, 0), dtype=int)

    def summary(values: np.ndarray) -> list:
        return [float(v) if s else None for v, s in zip(values, summarised, strict=True)]

    def top(idx: np.ndarray) -> tuple[list, list]:
        ids = [seeds[row].tolist() if s else [] for row, s in zip(idx, summarised, strict=True)]
        vals = np.take_along_axis(safe, idx, axis=1)
        return ids, [v.tolist() if s else [] for v, s in zip(vals, summarised, strict=True)]

    loss = np.asarray(batch.loss, dtype=np.float64).reshape(n)
    cols: dict[str, list | pa.Array] = {
        "id": [str(i) for i in batch.ids],
        "ok": ok.tolist(),
        "bad_reason": [None if g else (r or "unknown") for g, r in zip(ok, batch.bad_reason, strict=True)],
        "loss": _float_list(loss.tolist()),
        "n_tokens": np.asarray(batch.n_tokens).reshape(n).astype(np.int32).tolist(),
        "benefit_mean": summary(safe.mean(1)),
        "benefit_frac_pos": summary((safe > 0).mean(1)),
        "benefit_min": summary(safe.min(1)),
        "benefit_max": summary(safe.max(1)),
    }
    cols["top_helped"], cols["top_helped_values"] = top(helped)
    cols["top_harmed"], cols["top_harmed_values"] = top(harmed)
    cols["benefit"] = _list_column(ben.astype(np.float32), ok & stored & (m > 0), pa.float32())
    cols["feature"] = _list_column(feats, ok, pa.float32())
    norms = np.full(n, np.nan) if batch.grad_norm is None else np.asarray(batch.grad_norm, dtype=np.float64)
    cols["grad_norm"] = _float_list(np.where(ok, norms, np.nan).tolist())
    for v in json.loads(schema.metadata.get(META_VARIANTS, b"[]")):
        if batch.variant_benefit is None or v not in batch.variant_benefit:
            raise ValueError(f"score batch lacks the benefit of variant {v!r}")
        vb = np.asarray(batch.variant_benefit[v], dtype=np.float64).reshape(n, m)
        vsafe = np.where(summarised[:, None], vb, 0.0) if m > 0 else np.zeros((n, 1))
        cols[variant_column(v, "mean")] = summary(vsafe.mean(1))
        cols[variant_column(v, "frac_pos")] = summary((vsafe > 0).mean(1))
        cols[variant_column(v, "min")] = summary(vsafe.min(1))
    return pa.Table.from_pydict(cols, schema=schema)


class ScoreShardWriter:
    """Streams :class:`ScoreBatch` es into one Parquet file, renamed into place on a clean exit.

    Use as a context manager; each :meth:`write` becomes one row group, so memory stays bounded
    by the batch size whatever the shard size. An exception inside the block leaves no file.
    """

    def __init__(
        self,
        path: str | Path,
        seed_ids: Sequence[str],
        feature_dim: int,
        full_benefit_max_seeds: int = 1024,
        top_k_seeds: int = 5,
        variants: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self.seed_ids = [str(s) for s in seed_ids]
        self.schema = score_schema(
            self.seed_ids, feature_dim, len(self.seed_ids) <= full_benefit_max_seeds, variants
        )
        self.top_k = top_k_seeds
        self.n_rows = 0
        self._stack = ExitStack()
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ScoreShardWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="zstd")
        return self

    def write(self, batch: ScoreBatch) -> None:
        if self._writer is None:
            raise RuntimeError("ScoreShardWriter.write outside its `with` block")
        if len(batch) == 0:
            return
        self._writer.write_table(_batch_table(batch, self.schema, self.seed_ids, self.top_k))
        self.n_rows += len(batch)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._writer is not None:
            self._writer.close()  # even on error: the temp file is then deleted by atomic_path
            self._writer = None
        return bool(self._stack.__exit__(exc_type, exc, tb))


def write_score_shard(
    path: str | Path,
    batches: Iterable[ScoreBatch],
    seed_ids: Sequence[str],
    feature_dim: int,
    full_benefit_max_seeds: int = 1024,
    top_k_seeds: int = 5,
) -> int:
    """Write all ``batches`` to ``path`` atomically; returns the number of rows written."""
    with ScoreShardWriter(path, seed_ids, feature_dim, full_benefit_max_seeds, top_k_seeds) as w:
        for b in batches:
            w.write(b)
    return w.n_rows


@dataclass
class ScoreTable:
    """All rows of one or more score shards, as numpy arrays (N rows, M seeds, d features).

    Bad rows (``ok`` False) have NaN summaries, NaN ``benefit`` and ``features`` rows and empty
    top-k lists. ``benefit`` is None when any shard stored only summaries (M too large).
    """

    ids: np.ndarray  # object [N]
    ok: np.ndarray  # bool [N]
    bad_reason: np.ndarray  # object [N], None for ok rows
    loss: np.ndarray  # float64 [N]
    n_tokens: np.ndarray  # int32 [N]
    benefit_mean: np.ndarray  # float64 [N]
    benefit_frac_pos: np.ndarray
    benefit_min: np.ndarray
    benefit_max: np.ndarray
    benefit: np.ndarray | None  # float32 [N, M]
    features: np.ndarray  # float32 [N, d]
    seed_ids: list[str]
    top_helped: list[list[str]]
    top_helped_values: list[list[float]]
    top_harmed: list[list[str]]
    top_harmed_values: list[list[float]]
    grad_norm: np.ndarray | None = None  # float64 [N]
    #: variant name -> {"mean", "frac_pos", "min"} arrays [N]; the first is the benefit columns'
    variants: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def primary_variant(self) -> str | None:
        return next(iter(self.variants), None)

    def for_variant(self, variant: str | None) -> ScoreTable:
        """This table ranked by another score variant: its mean, fraction positive and minimum
        replace the benefit summaries (the per-seed benefit and top-k lists, which belong to the
        primary variant, are dropped). None or the primary variant: the table itself."""
        if variant is None or variant == self.primary_variant:
            return self
        if variant not in self.variants:
            raise KeyError(f"score variant {variant!r} was not scored; have {sorted(self.variants) or ['(primary only)']} "
                           "(add it to scoring.variants)")
        stats = self.variants[variant]
        empty: list[list] = [[] for _ in range(len(self.ids))]
        return replace(
            self,
            benefit_mean=stats["mean"],
            benefit_frac_pos=stats["frac_pos"],
            benefit_min=stats["min"],
            benefit_max=np.full(len(self.ids), np.nan),
            benefit=None,
            top_helped=empty, top_helped_values=empty, top_harmed=empty, top_harmed_values=empty,
            variants={variant: stats, **{k: v for k, v in self.variants.items() if k != variant}},
        )


def _float_col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _matrix_col(table: pa.Table, name: str, width: int) -> np.ndarray:
    """A list<float32> column as an [N, width] array; null rows become NaN.

    Goes through Arrow buffers, never Python lists: at pool scale (1M x 256) a list round trip
    costs minutes and tens of GiB.
    """
    col = table.column(name).combine_chunks()
    out = np.full((len(col), width), np.nan, dtype=np.float32)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        out[valid] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return out


def read_seed_ids(path: str | Path) -> list[str]:
    """The seed ids stored in a shard's schema metadata."""
    meta = pq.read_schema(path).metadata or {}
    return list(json.loads(meta[META_SEED_IDS]))


def read_scores(paths: Sequence[str | Path] | str | Path) -> ScoreTable:
    """Read and concatenate score shards (in the given order). All must share the same seed ids
    and variants. A file that cannot be read raises ValueError naming it."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ValueError("read_scores: no shard paths given")
    tables = []
    seed_ids: list[str] | None = None
    feature_dim: int | None = None
    variants: list[str] | None = None
    stored = True
    from gdig_core.integrity import reading

    for p in paths:
        with reading(p, "score shard"):
            t = pq.read_table(p)
        meta = t.schema.metadata or {}
        sids = list(json.loads(meta[META_SEED_IDS]))
        fdim = int(meta[META_FEATURE_DIM])
        vnames = list(json.loads(meta.get(META_VARIANTS, b"[]")))
        if seed_ids is None:
            seed_ids, feature_dim, variants = sids, fdim, vnames
        elif sids != seed_ids or fdim != feature_dim or vnames != variants:
            raise ValueError(f"{p}: seed ids, feature dimension or variants differ from {paths[0]}")
        stored = stored and meta.get(META_BENEFIT_STORED) == b"1"
        cols = [c for c in COLUMNS if c in t.column_names]  # grad_norm is absent from older shards
        cols += [variant_column(v, s) for v in vnames for s in VARIANT_STATS]
        tables.append(t.select(cols).replace_schema_metadata(None))
    table = pa.concat_tables(tables)
    assert seed_ids is not None and feature_dim is not None and variants is not None
    return ScoreTable(
        ids=np.array(table.column("id").to_pylist(), dtype=object),
        ok=table.column("ok").to_numpy(zero_copy_only=False).astype(bool),
        bad_reason=np.array(table.column("bad_reason").to_pylist(), dtype=object),
        loss=_float_col(table, "loss"),
        n_tokens=table.column("n_tokens").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32),
        benefit_mean=_float_col(table, "benefit_mean"),
        benefit_frac_pos=_float_col(table, "benefit_frac_pos"),
        benefit_min=_float_col(table, "benefit_min"),
        benefit_max=_float_col(table, "benefit_max"),
        benefit=_matrix_col(table, "benefit", len(seed_ids)) if stored else None,
        features=_matrix_col(table, "feature", feature_dim),
        seed_ids=seed_ids,
        top_helped=table.column("top_helped").to_pylist(),
        top_helped_values=table.column("top_helped_values").to_pylist(),
        top_harmed=table.column("top_harmed").to_pylist(),
        top_harmed_values=table.column("top_harmed_values").to_pylist(),
        grad_norm=_float_col(table, "grad_norm") if "grad_norm" in table.column_names else None,
        variants={v: {s: _float_col(table, variant_column(v, s)) for s in VARIANT_STATS} for v in variants},
    )


def verify_score_shard(path: str | Path, expected_ids: Sequence[str] | None = None) -> bool:
    """True when ``path`` is a readable, complete score shard (for resume checks).

    Checks the footer parses, all columns and the seed-id metadata are present, ids are unique,
    and, when ``expected_ids`` is given, that exactly those ids are present.
    """
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        meta = schema.metadata or {}
        if META_SEED_IDS not in meta or META_FEATURE_DIM not in meta:
            return False
        json.loads(meta[META_SEED_IDS])
        variants = json.loads(meta.get(META_VARIANTS, b"[]"))
        wanted = [*COLUMNS, *(variant_column(v, s) for v in variants for s in VARIANT_STATS)]
        if any(name not in schema.names for name in wanted):
            return False
        ids = pf.read(columns=["id"]).column("id").to_pylist()
    except Exception:  # any unreadable file is simply "not done": the shard is recomputed
        return False
    if len(set(ids)) != len(ids):
        return False
    if expected_ids is not None and sorted(ids) != sorted(str(i) for i in expected_ids):
        return False
    return True
