"""Quality estimation from the LLM itself: dual conditional cross-entropy (Junczys-Dowmunt 2018,
"Dual conditional cross-entropy filtering of noisy parallel corpora").

For a pair (x, y) in languages (X, Y), with per-token NLLs under the same model

- ``H_fwd`` = NLL(y | x), the target given the source under the translation prompt (the training
  loss of the pair, the scoring pass's ``loss`` at that model);
- ``H_bwd`` = NLL(x | y), the source given the target under the reversed prompt (translate from
  Y into X);

the score is ``-(|H_fwd - H_bwd| + (H_fwd + H_bwd) / 2)``: high when both directions are likely and
agree. A source copy is cheap in one direction only and a misaligned pair is unlikely in both, so
both score low. (The paper exponentiates this; the ranking is the same.) Each direction is one
forward pass per pair, no backward.

Output table (Parquet, pool order): ``id``, ``nll_fwd``, ``nll_bwd`` (per token), ``tokens_fwd``,
``tokens_bwd``, ``qe``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gdig_core.config import GdigConfig
from gdig_core.io import atomic_path

QE_COLUMNS = ("nll_fwd", "nll_bwd", "tokens_fwd", "tokens_bwd", "qe")


def dual_xent_score(nll_fwd: np.ndarray, nll_bwd: np.ndarray) -> np.ndarray:
    """``-(|H_fwd - H_bwd| + (H_fwd + H_bwd) / 2)`` per pair (per-token NLLs)."""
    f = np.asarray(nll_fwd, dtype=np.float64)
    b = np.asarray(nll_bwd, dtype=np.float64)
    return -(np.abs(f - b) + 0.5 * (f + b))


def reversed_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pairs the other way round: the target becomes the source (and the languages swap)."""
    return [{"id": r["id"], "src_lang": r["tgt_lang"], "tgt_lang": r["src_lang"], "src": r["tgt"], "tgt": r["src"]}
            for r in rows]


def dual_nll(
    model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], cfg: GdigConfig, batch_size: int
) -> pa.Table:
    """Both directions' per-token NLL and the QE score of every row (module doc), in row order."""
    from gdig_core.training.nll import target_nll

    rows = [dict(r) for r in rows]
    fwd, n_fwd = target_nll(model, tokenizer, rows, cfg, batch_size)
    bwd, n_bwd = target_nll(model, tokenizer, reversed_rows(rows), cfg, batch_size)
    h_fwd = fwd / np.maximum(n_fwd, 1)
    h_bwd = bwd / np.maximum(n_bwd, 1)
    return pa.table({
        "id": pa.array([str(r["id"]) for r in rows], type=pa.string()),
        "nll_fwd": h_fwd, "nll_bwd": h_bwd,
        "tokens_fwd": n_fwd.astype(np.int32), "tokens_bwd": n_bwd.astype(np.int32),
        "qe": dual_xent_score(h_fwd, h_bwd),
    })


def write_qe(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_qe(path: str | Path) -> pa.Table:
    """A QE table written by :func:`write_qe`; a file that cannot be read names itself."""
    from gdig_core.integrity import reading

    with reading(path, "QE scores"):
        table = pq.read_table(path)
    missing = [c for c in ("id", *QE_COLUMNS) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: QE table lacks columns {missing}")
    return table


def qe_by_id(table: pa.Table, column: str = "qe") -> dict[str, float]:
    """id -> value of one QE column."""
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist(), strict=True))


#: Pool rows per resumable piece of :func:`score_pool`: a killed run loses at most one.
CHUNK_ROWS = 256


def score_pool(
    model: Any, tokenizer: Any, pairs: pa.Table, cfg: GdigConfig, batch_size: int, work_dir: str | Path,
    progress: Any = None,
) -> pa.Table:
    """QE of every pool pair, in pool order. Pieces of :data:`CHUNK_ROWS` rows are written
    atomically to ``work_dir`` (named by their rows' ids, so a changed pool never reuses one) and
    reused by a rerun. ``progress(done, total)`` is called after each piece."""
    from gdig_core.io import text_sha256

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows = pairs.select(["id", "src_lang", "tgt_lang", "src", "tgt"]).to_pylist()
    pieces = []
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start:start + CHUNK_ROWS]
        path = work / f"qe-{start:09d}-{text_sha256(*(str(r['id']) for r in chunk))[:16]}.parquet"
        table = None
        if path.exists():
            try:
                table = read_qe(path)
            except ValueError:
                table = None  # a piece that cannot be read is computed again
            if table is not None and table.column("id").to_pylist() != [str(r["id"]) for r in chunk]:
                table = None
        if table is None:
            table = dual_nll(model, tokenizer, chunk, cfg, batch_size)
            write_qe(table, path)
        pieces.append(table)
        if progress is not None:
            progress(min(start + CHUNK_ROWS, len(rows)), len(rows))
    if not pieces:
        return dual_nll(model, tokenizer, [], cfg, batch_size)
    return pa.concat_tables(pieces)
