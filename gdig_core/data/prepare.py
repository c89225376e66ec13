"""The data stage's work: read pool and seed, keep seed sentences out of the pool, inject labelled
noise, write the files later stages read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gdig_core.config import DataConfig
from gdig_core.data.pairs import PAIR_FIELDS, PAIR_SCHEMA, DataError, table_sha256, write_jsonl, write_pairs
from gdig_core.data.readers import read_dataset
from gdig_core.io import atomic_path, atomic_write_json


def inject_noise(
    table: pa.Table,
    data_cfg: DataConfig,
    language_names: dict[str, str] | None = None,
    weak_translator: Callable[[list[str]], list[str]] | None = None,
) -> tuple[pa.Table, dict[str, str]]:
    """Corrupt the pool per ``data_cfg.noise`` (gdig_core.data.noise): the pair table with the
    corrupted targets, and id -> label (``clean`` or the noise kind)."""
    from gdig_core.data.noise import corrupt_pairs

    noise = data_cfg.noise
    assert noise is not None
    third = None
    if noise.third_language is not None:
        third = read_dataset(noise.third_language, data_cfg, "pool", language_names).table.column("src").to_pylist()
    if "low_quality_mt" in noise.kinds and weak_translator is None:
        raise ValueError("noise kind 'low_quality_mt' needs a weak translator (data.noise.weak_mt)")
    out = corrupt_pairs(table, noise.fraction, noise.kinds, noise.seed, third_language_texts=third,
                        weak_translator=weak_translator)
    labels = dict(zip(out.column("id").to_pylist(), out.column("noise").to_pylist(), strict=True))
    return out.select(list(PAIR_FIELDS)).cast(PAIR_SCHEMA), labels


def prepare_data(
    data_cfg: DataConfig,
    out_dir: str | Path,
    language_names: dict[str, str] | None = None,
    weak_translator: Callable[[list[str]], list[str]] | None = None,
) -> dict:
    """Read pool and seed, write ``pool.parquet``, ``seed.parquet``, ``quarantine.jsonl`` and
    ``data_summary.json`` into ``out_dir``; return the summary (with content hashes).

    With ``data_cfg.noise`` the (sampled) pool is corrupted after dedup and the seed-overlap
    check, and ``noise_labels.parquet`` records every row's label; ``weak_translator`` produces
    the ``low_quality_mt`` targets (only for the rows that get that kind).
    """
    out = Path(out_dir)
    pool = read_dataset(data_cfg.pool, data_cfg, "pool", language_names)
    seed = read_dataset(data_cfg.seed, data_cfg, "seed", language_names)
    overlap = set(pool.table.column("src").to_pylist()) & set(seed.table.column("src").to_pylist())
    if overlap:
        # Selecting a seed sentence from the pool would leak the objective; keep it visible.
        pool_ids = [
            i for i, s in zip(pool.table.column("id").to_pylist(), pool.table.column("src").to_pylist(), strict=True)
            if s in overlap
        ]
        pool.quarantine.extend(
            {"file": pool.stats["file"], "line": None, "field": "src", "reason": "source also in the seed set", "raw": i}
            for i in pool_ids
        )
        keep = pa.array([s not in overlap for s in pool.table.column("src").to_pylist()])
        pool.table = pool.table.filter(keep)
        pool.stats["quarantined"] += len(pool_ids)
        pool.stats["quarantined_by_reason"]["source also in the seed set"] = len(pool_ids)
        pool.stats["rows_kept"] = pool.table.num_rows
        pool.stats["content_hash"] = table_sha256(pool.table)
    kept = set(pool.table.column("id").to_pylist())
    labels = {i: label for i, label in pool.noise_labels.items() if i in kept}
    if data_cfg.noise is not None:
        if labels:
            raise DataError(pool.stats["file"], None, "noise", "the pool already carries noise labels; "
                            "data.noise would corrupt it twice (remove one)")
        pool.table, labels = inject_noise(pool.table, data_cfg, language_names, weak_translator)
        pool.stats["noise_labels"] = dict(Counter(labels.values()))
        pool.stats["content_hash"] = table_sha256(pool.table)
    write_pairs(pool.table, out / "pool.parquet")
    write_pairs(seed.table, out / "seed.parquet")
    write_jsonl(pool.quarantine, out / "quarantine.jsonl")
    if labels:
        # Only experiments with injected noise have these; the report uses them for clean shares.
        with atomic_path(out / "noise_labels.parquet") as tmp:
            pq.write_table(pa.table({"id": list(labels), "noise": list(labels.values())}), tmp)
    summary = {"pool": pool.stats, "seed": seed.stats}
    atomic_write_json(out / "data_summary.json", summary)
    return summary
