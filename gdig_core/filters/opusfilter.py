"""OpusFilter's standard cleaning chain (Helsinki-NLP's toolbox for parallel corpora) as a
per-pair score: the filters an MT engineer runs on a crawled or mixed corpus before training.

The chain, each filter with the thresholds its documentation gives as defaults:

- ``length``: ``LengthFilter`` (1-100 words per side; characters for languages written without
  spaces, as the OpusFilter docs advise for Chinese and Japanese)
- ``length_ratio``: ``LengthRatioFilter`` (longer side at most 3 times the shorter, same units)
- ``script``: ``CharacterScoreFilter`` (every alphabetic character in the side's script)
- ``terminal_punctuation``: ``TerminalPunctuationFilter`` (penalty above -2 rejects)
- ``numerals``: ``NonZeroNumeralsFilter`` (similarity of the non-zero digits at least 0.5)
- ``language_id``: ``LangidFilter`` (langid.py via py3langid; the identified language of each
  side must be the pair's, confidence above 0)

``opusfilter_scores`` gives each filter's accept decision, the number passed, and the chain's
score: the number of filters passed plus the mean language-id confidence of the two sides
(in [0, 1)), so pairs that pass everything rank first and ties break by how surely each side is
in its language. The library is an optional extra (``pip install 'gdig[opusfilter]'``); without
it the methods that need it fail with that instruction.

Compatibility: OpusFilter 3.3.1's langid filters call ``LanguageIdentifier.from_pickled_model``,
which py3langid 0.4 (needed by gdig_core.filters.rules) renamed to ``from_model_file`` with the
same arguments; :func:`_py3langid_compat` adds the old name when it is missing, so the library's
own filter runs unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

#: The chain's filters in the order they run (names used in summaries and the report).
FILTERS = ("length", "length_ratio", "script", "terminal_punctuation", "numerals", "language_id")
#: Unicode script of each language the project handles (CharacterScoreFilter's ``scripts``).
SCRIPTS = {"de": "Latin", "en": "Latin", "fr": "Latin", "es": "Latin", "cs": "Latin", "is": "Latin",
           "it": "Latin", "nl": "Latin", "pl": "Latin", "pt": "Latin", "zh": "Han", "ru": "Cyrillic",
           "uk": "Cyrillic"}
#: Languages written without spaces between words: lengths in characters (OpusFilter docs).
CHARACTER_UNIT = frozenset({"zh", "ja"})

INSTALL_HINT = "the opusfilter method and pre-filter need OpusFilter: pip install 'gdig[opusfilter]' (opusfilter==3.3.1)"


class OpusFilterUnavailable(ImportError):
    """OpusFilter is not installed (it is an optional extra)."""


def _py3langid_compat() -> None:
    from py3langid.langid import LanguageIdentifier

    if not hasattr(LanguageIdentifier, "from_pickled_model"):
        LanguageIdentifier.from_pickled_model = LanguageIdentifier.from_model_file  # type: ignore[attr-defined]


def _filters_module() -> Any:
    try:
        import opusfilter.filters as filters
        import opusfilter.lid as lid
    except ImportError as err:
        raise OpusFilterUnavailable(INSTALL_HINT) from err
    _py3langid_compat()
    return filters, lid


@functools.lru_cache(maxsize=8)
def build_chain(src_lang: str, tgt_lang: str) -> tuple[tuple[str, Any], ...]:
    """The chain's filter objects for one language pair, built once per pair."""
    filters, lid = _filters_module()
    unknown = [lang for lang in (src_lang, tgt_lang) if lang not in SCRIPTS]
    if unknown:
        raise ValueError(f"opusfilter: no script known for language {unknown[0]!r}; have {sorted(SCRIPTS)}")
    units = ["char" if lang in CHARACTER_UNIT else "word" for lang in (src_lang, tgt_lang)]
    return (
        ("length", filters.LengthFilter(min_length=1, max_length=100, unit=units)),
        ("length_ratio", filters.LengthRatioFilter(threshold=3, unit=units)),
        ("script", filters.CharacterScoreFilter(scripts=[SCRIPTS[src_lang], SCRIPTS[tgt_lang]])),
        ("terminal_punctuation", filters.TerminalPunctuationFilter(threshold=-2)),
        ("numerals", filters.NonZeroNumeralsFilter(threshold=0.5)),
        ("language_id", lid.LangidFilter(languages=[src_lang, tgt_lang])),
    )


def opusfilter_scores(
    src: Sequence[str], tgt: Sequence[str], src_lang: str, tgt_lang: str
) -> dict[str, np.ndarray]:
    """Per pair: ``accept:<filter>`` (bool) for every filter, ``passed`` (how many), ``accepted``
    (all of them) and ``score`` (module doc; higher = more likely clean)."""
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} sources but {len(tgt)} targets")
    pairs = list(zip(src, tgt, strict=True))
    out: dict[str, np.ndarray] = {}
    lid_conf = np.zeros(len(pairs))
    for name, flt in build_chain(src_lang, tgt_lang):
        scores = list(flt.score(pairs)) if pairs else []
        out[f"accept:{name}"] = np.array([bool(flt.accept(s)) for s in scores], dtype=bool)
        if name == "language_id" and scores:
            lid_conf = np.array([float(np.mean(s)) for s in scores])
    passed = np.sum([out[f"accept:{name}"] for name in FILTERS], axis=0) if pairs else np.zeros(0)
    out["passed"] = np.asarray(passed, dtype=np.int64)
    out["accepted"] = out["passed"] == len(FILTERS)
    # Confidence in [0, 1] scaled below 1, so it only breaks ties between equal counts.
    out["score"] = out["passed"] + 0.999 * np.clip(lid_conf, 0.0, 1.0)
    return out


def rejections(scores: dict[str, np.ndarray]) -> dict[str, int]:
    """How many pairs each filter rejects (a pair may be rejected by several)."""
    return {name: int((~scores[f"accept:{name}"]).sum()) for name in FILTERS}
