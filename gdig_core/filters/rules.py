"""Cheap, model-free per-pair quality scores (higher = more likely clean): the filters an MT
engineer runs before anything expensive, and the baselines a data selection method must beat.

- ``length_ratio_score``: ``-|log(len_tgt / len_src) - median|`` in characters (+1 each, so
  empty strings are fine); the median is over the pairs scored together.
- ``copy_score``: ``1 -`` the share of the target's character 3-grams that also occur in the
  source, after NFKC, casefolding and dropping everything but letters and digits (so quote
  style, spacing and case do not hide a copy). Copies score 0; partial copies in between.
- ``language_id_score``: the probability that the target is in ``tgt_lang``, from py3langid
  (langid.py's model) restricted to ``LID_LANGUAGES`` plus ``tgt_lang``.
- ``combined_filter_score``: reject copies (``copy_score < COPY_THRESHOLD``) and wrong target
  language (``language_id_score < LID_THRESHOLD``), rank the rest by length ratio. Rejected pairs
  score ``length_ratio - REJECTED_OFFSET``: below every kept pair, still ordered among themselves.

``rejected(name, score)`` applies one filter's threshold alone (a pre-filter for selection
methods); the length ratio's, ``LENGTH_RATIO_THRESHOLD``, is not part of the combined score.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Candidate languages of the identifier: the project's languages that langid.py knows, plus a
#: few common ones that crawled English or German text gets confused with.
LID_LANGUAGES = ("en", "de", "zh", "cs", "ru", "is", "ja", "fr", "es", "uk", "nl", "it", "pt", "pl")
#: A target sharing at least half of its character 3-grams with the source is a copy. Round
#: numbers an engineer would pick, not tuned on noise labels; docs/noise.md gives the share of
#: clean pairs each rejects.
COPY_THRESHOLD = 0.5
#: Below this probability of being in the target language a target is rejected.
LID_THRESHOLD = 0.5
#: A target more than twice as long, or less than half as long, as the pool's typical ratio
#: predicts is rejected by the length pre-filter (the classic factor-2 cleaning rule).
LENGTH_RATIO_THRESHOLD = -float(np.log(2.0))
REJECTED_OFFSET = 1000.0
_THRESHOLDS = {"copy": COPY_THRESHOLD, "language_id": LID_THRESHOLD, "length_ratio": LENGTH_RATIO_THRESHOLD}


def length_ratio_score(src: Sequence[str], tgt: Sequence[str]) -> np.ndarray:
    """``-|log((len_tgt+1)/(len_src+1)) - median|`` per pair, in characters."""
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} sources but {len(tgt)} targets")
    if not len(src):
        return np.zeros(0)
    s = np.array([len(x) for x in src], dtype=np.float64)
    t = np.array([len(x) for x in tgt], dtype=np.float64)
    log_ratio = np.log((t + 1.0) / (s + 1.0))
    return -np.abs(log_ratio - np.median(log_ratio))


def _trigrams(text: str) -> set[str]:
    kept = "".join(c for c in unicodedata.normalize("NFKC", text).casefold() if c.isalnum())
    if len(kept) < 3:
        return {kept} if kept else set()
    return {kept[i : i + 3] for i in range(len(kept) - 2)}


def copy_score(src: Sequence[str], tgt: Sequence[str]) -> np.ndarray:
    """``1 -`` the share of the target's character 3-grams found in the source (1 when the target
    has no letters or digits)."""
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} sources but {len(tgt)} targets")
    out = np.ones(len(tgt))
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        grams = _trigrams(t)
        if grams:
            out[i] = 1.0 - len(grams & _trigrams(s)) / len(grams)
    return out


@functools.lru_cache(maxsize=8)
def _identifier(languages: tuple[str, ...]) -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(list(languages))
    return ident


def language_id_score(tgt: Sequence[str], tgt_lang: str) -> np.ndarray:
    """Probability that each target is written in ``tgt_lang`` (py3langid, normalised over
    ``LID_LANGUAGES`` and ``tgt_lang``)."""
    languages = tuple(sorted({*LID_LANGUAGES, tgt_lang}))
    try:
        ident = _identifier(languages)
    except ValueError as err:  # py3langid names the code it does not know
        raise ValueError(f"language identification cannot score {tgt_lang!r}: {err}") from err
    out = np.zeros(len(tgt))
    for i, text in enumerate(tgt):
        out[i] = dict(ident.rank(text)).get(tgt_lang, 0.0)
    return out


def combined_filter_score(
    src: Sequence[str],
    tgt: Sequence[str],
    tgt_lang: str,
    copy_threshold: float = COPY_THRESHOLD,
    lid_threshold: float = LID_THRESHOLD,
) -> np.ndarray:
    """Length-ratio ranking after rejecting copies and wrong-language targets (module doc)."""
    return _combine(
        length_ratio_score(src, tgt), copy_score(src, tgt), language_id_score(tgt, tgt_lang),
        copy_threshold, lid_threshold,
    )


def rejected(name: str, score: np.ndarray) -> np.ndarray:
    """Which pairs the filter ``name`` (``copy``, ``language_id`` or ``length_ratio``) rejects,
    given that filter's scores: those below its threshold."""
    if name not in _THRESHOLDS:
        raise ValueError(f"no threshold for filter {name!r}; choose from {', '.join(_THRESHOLDS)}")
    return np.asarray(score, dtype=np.float64) < _THRESHOLDS[name]


def _combine(
    length: np.ndarray, copy: np.ndarray, lid: np.ndarray, copy_threshold: float, lid_threshold: float
) -> np.ndarray:
    bad = (copy < copy_threshold) | (lid < lid_threshold)
    return np.where(bad, length - REJECTED_OFFSET, length)


def cheap_scores(src: Sequence[str], tgt: Sequence[str], tgt_lang: str) -> dict[str, np.ndarray]:
    """Every cheap score by name (``length_ratio``, ``copy``, ``language_id``, ``combined``),
    each computed once."""
    scores = {
        "length_ratio": length_ratio_score(src, tgt),
        "copy": copy_score(src, tgt),
        "language_id": language_id_score(tgt, tgt_lang),
    }
    scores["combined"] = _combine(
        scores["length_ratio"], scores["copy"], scores["language_id"], COPY_THRESHOLD, LID_THRESHOLD
    )
    return scores
