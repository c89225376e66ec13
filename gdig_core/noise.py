"""Deterministic noise injection for selection experiments: every pair keeps a ``noise`` label.

Kinds (each realistic for web-mined or badly aligned parallel data):
- ``misaligned``: the target of another pair of the pool;
- ``source_copy``: the target is the source sentence itself;
- ``truncated``: the target cut to under half of its words;
- ``wrong_language``: the target is a sentence in a third language (from ``third_language_texts``),
  or, when none is given, another pair's source (the source language);
- ``low_quality_mt``: a machine translation from a weak system (hypotheses supplied by the caller,
  e.g. the base model's own zero-shot output).
Clean pairs are labelled ``clean``. The same inputs and seed always give the same output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

NOISE_KINDS = ("misaligned", "source_copy", "truncated", "wrong_language", "low_quality_mt")


def _truncate_words(text: str) -> str:
    words = text.split()
    if len(words) >= 2:
        return " ".join(words[: max(1, (len(words) - 1) // 2)])
    # One "word" (e.g. unsegmented Chinese): cut characters instead.
    return text[: max(1, (len(text) - 1) // 2)]


def corrupt_pairs(
    table: pa.Table,
    fraction: float,
    kinds: Sequence[str] = NOISE_KINDS,
    seed: int = 0,
    third_language_texts: Sequence[str] | None = None,
    mt_hypotheses: dict[str, str] | None = None,
) -> pa.Table:
    """Return ``table`` with ``fraction`` of its targets corrupted, split evenly across ``kinds``,
    plus columns ``noise`` (kind or ``clean``) and ``original_tgt``.

    ``mt_hypotheses`` maps pair id -> a weak system's translation; required for ``low_quality_mt``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    unknown = [k for k in kinds if k not in NOISE_KINDS]
    if unknown:
        raise ValueError(f"unknown noise kinds {unknown}; choose from {NOISE_KINDS}")
    if "low_quality_mt" in kinds and not mt_hypotheses:
        raise ValueError("noise kind 'low_quality_mt' needs mt_hypotheses (id -> weak translation)")
    rng = np.random.default_rng(seed)
    n = table.num_rows
    ids = table.column("id").to_pylist()
    src = table.column("src").to_pylist()
    tgt = table.column("tgt").to_pylist()
    n_noisy = int(round(fraction * n))
    noisy_rows = rng.permutation(n)[:n_noisy]
    labels = ["clean"] * n
    new_tgt = list(tgt)
    for i, row in enumerate(sorted(noisy_rows.tolist())):
        labels[row] = kinds[i % len(kinds)]
    # A second, independent permutation picks donors for misaligned / wrong-language targets.
    donors = rng.permutation(n)
    third = list(third_language_texts or [])
    for row in range(n):
        kind = labels[row]
        if kind == "clean":
            continue
        if kind == "misaligned":
            donor = int(donors[row]) if int(donors[row]) != row else (row + 1) % n
            new_tgt[row] = tgt[donor]
        elif kind == "source_copy":
            new_tgt[row] = src[row]
        elif kind == "truncated":
            new_tgt[row] = _truncate_words(tgt[row])
        elif kind == "wrong_language":
            if third:
                new_tgt[row] = third[int(rng.integers(len(third)))]
            else:
                donor = int(donors[row]) if int(donors[row]) != row else (row + 1) % n
                new_tgt[row] = src[donor]
        elif kind == "low_quality_mt":
            hyp = (mt_hypotheses or {}).get(ids[row], "")
            if not hyp.strip():
                raise ValueError(f"no weak translation given for pair {ids[row]!r}")
            new_tgt[row] = hyp
    out = table.set_column(table.column_names.index("tgt"), "tgt", pa.array(new_tgt, pa.string()))
    return out.append_column("noise", pa.array(labels, pa.string())).append_column(
        "original_tgt", pa.array(tgt, pa.string())
    )
