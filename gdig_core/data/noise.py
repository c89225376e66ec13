"""Deterministic, realistic noise injection for selection experiments: every pair keeps a label.

``corrupt_pairs`` replaces the target of ``fraction`` of the pairs, split evenly over the chosen
kinds, and adds the columns ``noise`` (the kind, or ``clean``) and ``original_tgt``. Each kind
imitates an error found in web-mined or badly aligned parallel data and is built so that no
single trivial rule (length ratio, exact copy, script or language check) catches all of it;
docs/noise.md measures how well cheap rules do on each.

A *unit* below is a whitespace-separated word, or a character for text in an unsegmented script
(Chinese, Japanese, Korean, Thai). Cuts fall between units, so the original spelling and spacing
of the kept part is unchanged.

- ``misaligned``: a one-off sentence-alignment error: the target of a neighbouring pair in table
  order (the row before or after, whichever target is closer in length to the row's own; ties
  drawn at random). News test sets are documents, so the donor is topically related and of
  plausible length. When neither neighbour has a different target, a random donor among the 10
  targets closest in length.
- ``source_copy``: untranslated output, the source copied. Half of these rows (rounded down) get
  light surface edits so that exact-match filters miss them: typographic quotes normalised to
  ASCII, then one seeded edit of either tokenised-style spacing (a space before ``, . ! ? ; :``)
  or the first letter's case flipped (the other edit when the first changes nothing). The rest
  are exact copies. Rows whose target already equals the source are never chosen.
- ``truncated``: a prefix or a suffix (a fair seeded coin) keeping a uniform 30-70% of the
  target's units (at least one unit, at least one dropped). The piece keeps sentence form, as
  segmentation errors do: a prefix ends with the original's final ``.!?`` (a trailing comma,
  colon, semicolon or dash dropped first), a suffix starts with a capital letter. Rows need at
  least two target units.
- ``wrong_language``: a sentence in a wrong language of similar length. Half of these rows
  (rounded up, seeded; all when no ``third_language_texts`` are given) get another pair's
  source sentence (the source language, a realistic crawl error), the rest a sentence from
  ``third_language_texts``. The sentence is the unused candidate whose character-length quantile
  within its own collection (ties broken at random) is closest to the original target's
  quantile among the table's targets; never the row's own source or target, and each
  candidate serves one row at most.
- ``partial_translation``: an MT system that stopped translating midway: the first p (uniform
  0.4-0.7) of the reference's units followed by the last 1-p of the source's units (more source
  units when the result would equal the reference, e.g. names at the end of both). Rows need at
  least two units on each side and a target different from the source.
- ``low_quality_mt``: a real weak system's translation of the source: ``mt_hypotheses[id]``, or
  ``weak_translator`` called once with the sources of the rows picked for this kind only (see
  ``gdig_core.evaluation.weak_mt``). Kept as is, even in the rare case it equals the reference.

Rows are picked by one seeded permutation, each kind in turn taking the next rows it applies to.
Each kind's random draws come from its own stream (seed, kind index). The same inputs and seed
always give the same output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

NOISE_KINDS = (
    "misaligned",
    "source_copy",
    "truncated",
    "wrong_language",
    "partial_translation",
    "low_quality_mt",
)
#: Kinds that need no translation system.
MODEL_FREE_KINDS = tuple(k for k in NOISE_KINDS if k != "low_quality_mt")

#: Sources in, one translation per source out.
Translator = Callable[[list[str]], list[str]]

_UNSEGMENTED = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_FINAL_PUNCT = re.compile(r"([.!?。！？…]+)[\"'”’»)\]]*\s*$")
_QUOTES = str.maketrans({"„": '"', "“": '"', "”": '"', "«": '"', "»": '"', "‚": "'", "‘": "'", "’": "'"})
_N_LENGTH_DONORS = 10


def _is_unsegmented(text: str) -> bool:
    visible = [c for c in text if not c.isspace()]
    return bool(visible) and sum(bool(_UNSEGMENTED.match(c)) for c in visible) / len(visible) > 0.3


def unit_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each unit: words, or non-space characters for unsegmented scripts."""
    pattern = r"\S" if _is_unsegmented(text) else r"\S+"
    return [(m.start(), m.end()) for m in re.finditer(pattern, text)]


def _clamp_units(share: float, n: int) -> int:
    return min(n - 1, max(1, round(share * n)))


def _truncate(text: str, rng: np.random.Generator) -> str:
    spans = unit_spans(text)
    keep = _clamp_units(rng.uniform(0.3, 0.7), len(spans))
    if rng.random() < 0.5:
        piece = text[: spans[keep - 1][1]]
        final = _FINAL_PUNCT.search(text)
        if final and not _FINAL_PUNCT.search(piece):
            piece = piece.rstrip(",;:-–—，；：、 ") + final.group(1)
        return piece
    piece = text[spans[-keep][0] :]
    return piece[:1].upper() + piece[1:]


def _edited_copy(src: str, rng: np.random.Generator) -> str:
    out = src.translate(_QUOTES)
    first = int(rng.integers(2))
    for edit in (first, 1 - first):
        if edit == 0:
            candidate = re.sub(r"(?<=\w)([,.!?;:])", r" \1", out)
        else:
            candidate = out[:1].lower() + out[1:] if out[:1].isupper() else out[:1].upper() + out[1:]
        if candidate != src:
            return candidate
    return out


def _neighbour_donor(row: int, tgt: Sequence[str], lengths: np.ndarray, rng: np.random.Generator) -> int:
    n = len(tgt)
    near = [j for j in (row - 1, row + 1) if 0 <= j < n and tgt[j] != tgt[row]]
    if near:
        gaps = [abs(int(lengths[j]) - int(lengths[row])) for j in near]
        best = [j for j, g in zip(near, gaps, strict=True) if g == min(gaps)]
        return best[int(rng.integers(len(best)))]
    gaps = np.abs(lengths - lengths[row]).astype(np.float64)
    gaps[[t == tgt[row] for t in tgt]] = np.inf
    donors = np.argsort(gaps, kind="stable")[:_N_LENGTH_DONORS]
    donors = donors[np.isfinite(gaps[donors])]
    return int(donors[int(rng.integers(len(donors)))])


def _length_quantiles(texts: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Each text's character-length quantile in its collection, ties broken at random."""
    lengths = np.array([len(t) for t in texts])
    order = np.lexsort((rng.random(len(texts)), lengths))
    q = np.empty(len(texts))
    q[order] = (np.arange(len(texts)) + 0.5) / len(texts)
    return q


class _QuantileDonors:
    """Candidates of one collection, handed out once each by closest length quantile."""

    def __init__(self, texts: Sequence[str], rng: np.random.Generator):
        self.texts = list(texts)
        self.q = _length_quantiles(self.texts, rng)
        self.free = np.ones(len(self.texts), dtype=bool)

    def take(self, quantile: float, forbidden: set[str]) -> str | None:
        gaps = np.where(self.free, np.abs(self.q - quantile), np.inf)
        for i in np.argsort(gaps, kind="stable"):
            if not np.isfinite(gaps[i]):
                return None
            if self.texts[i] not in forbidden:
                self.free[i] = False
                return self.texts[i]
        return None


def _partial_translation(src: str, tgt: str, rng: np.random.Generator) -> str:
    p = rng.uniform(0.4, 0.7)
    t_spans, s_spans = unit_spans(tgt), unit_spans(src)
    joiner = "" if _is_unsegmented(tgt) and _is_unsegmented(src) else " "
    head = tgt[: t_spans[_clamp_units(p, len(t_spans)) - 1][1]]
    keep_src = _clamp_units(1.0 - p, len(s_spans))
    out = head + joiner + src[s_spans[-keep_src][0] :]
    while out == tgt and keep_src < len(s_spans):
        keep_src += 1
        out = head + joiner + src[s_spans[-keep_src][0] :]
    return out


def _eligible(kind: str, src: str, tgt: str) -> bool:
    if kind == "source_copy":
        return src != tgt
    if kind == "truncated":
        return len(unit_spans(tgt)) >= 2
    if kind == "partial_translation":
        return src != tgt and len(unit_spans(tgt)) >= 2 and len(unit_spans(src)) >= 2
    return True


def _pick_rows(
    kinds: Sequence[str], n_noisy: int, src: Sequence[str], tgt: Sequence[str], rng: np.random.Generator
) -> dict[str, list[int]]:
    quota = {k: 0 for k in kinds}
    for i in range(n_noisy):
        quota[kinds[i % len(kinds)]] += 1
    order = rng.permutation(len(src)).tolist()
    taken: set[int] = set()
    picked: dict[str, list[int]] = {}
    for kind in kinds:
        rows = [r for r in order if r not in taken and _eligible(kind, src[r], tgt[r])][: quota[kind]]
        if len(rows) < quota[kind]:
            raise ValueError(f"only {len(rows)} pairs can take noise kind {kind!r}, {quota[kind]} needed")
        taken.update(rows)
        picked[kind] = sorted(rows)
    return picked


def _weak_translations(
    rows: list[int],
    ids: Sequence[str],
    src: Sequence[str],
    mt_hypotheses: dict[str, str] | None,
    weak_translator: Translator | None,
) -> list[str]:
    if not rows:
        return []
    if mt_hypotheses is not None:
        hyps = [mt_hypotheses.get(ids[r]) for r in rows]
    else:
        assert weak_translator is not None
        hyps = list(weak_translator([src[r] for r in rows]))
        if len(hyps) != len(rows):
            raise ValueError(f"weak_translator returned {len(hyps)} translations for {len(rows)} sources")
    for r, hyp in zip(rows, hyps, strict=True):
        if not isinstance(hyp, str) or not hyp.strip():
            raise ValueError(f"no weak translation (missing or empty) for pair {ids[r]!r}")
    return hyps


def corrupt_pairs(
    table: pa.Table,
    fraction: float,
    kinds: Sequence[str] = MODEL_FREE_KINDS,
    seed: int = 0,
    third_language_texts: Sequence[str] | None = None,
    mt_hypotheses: dict[str, str] | None = None,
    weak_translator: Translator | None = None,
) -> pa.Table:
    """Return ``table`` with ``fraction`` of its targets corrupted, split evenly across ``kinds``
    (see the module doc for each kind; by default all but ``low_quality_mt``), plus columns
    ``noise`` (kind or ``clean``) and ``original_tgt``.

    ``low_quality_mt`` needs exactly one of ``mt_hypotheses`` (pair id -> a weak system's
    translation; only the picked rows are looked up) or ``weak_translator`` (called once, with the
    picked rows' sources). ``third_language_texts`` feed half of the ``wrong_language`` rows.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in NOISE_KINDS]
    if unknown:
        raise ValueError(f"unknown noise kinds {unknown}; choose from {', '.join(NOISE_KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"noise kinds repeat: {kinds}")
    n = table.num_rows
    n_noisy = int(round(fraction * n))
    if n_noisy and not kinds:
        raise ValueError("no noise kinds given")
    if "low_quality_mt" in kinds and (mt_hypotheses is None) == (weak_translator is None):
        raise ValueError(
            "noise kind 'low_quality_mt' needs mt_hypotheses (id -> weak translation) or a "
            "weak_translator, exactly one of them"
        )
    clash = [c for c in ("noise", "original_tgt") if c in table.column_names]
    if clash:
        raise ValueError(f"the table already has column(s) {clash}: it is already corrupted")

    ids = [str(i) for i in table.column("id").to_pylist()]
    src = table.column("src").to_pylist()
    tgt = table.column("tgt").to_pylist()
    picked = _pick_rows(kinds, n_noisy, src, tgt, np.random.default_rng(seed))
    if picked.get("misaligned") and len(set(tgt)) < 2:
        raise ValueError("noise kind 'misaligned' needs at least two different targets")
    labels = ["clean"] * n
    new_tgt = list(tgt)
    lengths = np.array([len(t) for t in tgt])
    for kind, rows in picked.items():
        rng = np.random.default_rng([seed, NOISE_KINDS.index(kind)])
        for r in rows:
            labels[r] = kind
        if kind == "misaligned":
            for r in rows:
                new_tgt[r] = tgt[_neighbour_donor(r, tgt, lengths, rng)]
        elif kind == "source_copy":
            edited = set(rng.permutation(rows)[: len(rows) // 2].tolist())
            for r in rows:
                new_tgt[r] = _edited_copy(src[r], rng) if r in edited else src[r]
        elif kind == "truncated":
            for r in rows:
                new_tgt[r] = _truncate(tgt[r], rng)
        elif kind == "wrong_language":
            new_tgt_rows = _wrong_language(rows, src, tgt, third_language_texts, rng)
            for r, text in new_tgt_rows.items():
                new_tgt[r] = text
        elif kind == "partial_translation":
            for r in rows:
                new_tgt[r] = _partial_translation(src[r], tgt[r], rng)
        elif kind == "low_quality_mt":
            for r, hyp in zip(rows, _weak_translations(rows, ids, src, mt_hypotheses, weak_translator), strict=True):
                new_tgt[r] = hyp
    out = table.set_column(table.column_names.index("tgt"), "tgt", pa.array(new_tgt, pa.string()))
    return out.append_column("noise", pa.array(labels, pa.string())).append_column(
        "original_tgt", pa.array(tgt, pa.string())
    )


def _wrong_language(
    rows: list[int],
    src: Sequence[str],
    tgt: Sequence[str],
    third_language_texts: Sequence[str] | None,
    rng: np.random.Generator,
) -> dict[int, str]:
    if not rows:
        return {}
    third = [t for t in (third_language_texts or []) if t.strip()]
    order = rng.permutation(rows).tolist()
    to_third = set(order[len(order) - len(order) // 2 :]) if third else set()
    tgt_q = _length_quantiles(tgt, rng)
    collections = {"source": _QuantileDonors(src, rng), "third": _QuantileDonors(third, rng) if third else None}
    out: dict[int, str] = {}
    for r in rows:
        donors = collections["third"] if r in to_third else collections["source"]
        assert donors is not None
        text = donors.take(float(tgt_q[r]), {src[r], tgt[r]})
        if text is None:
            raise ValueError("not enough wrong-language sentences for noise kind 'wrong_language'")
        out[r] = text
    return out
