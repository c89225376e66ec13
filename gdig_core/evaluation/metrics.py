"""Translation metrics: BLEU and chrF with sacrebleu (corpus and sentence level), COMET when a
local COMET checkpoint is configured and ``unbabel-comet`` is installed.

Every score carries its sacrebleu signature so numbers from different runs can be compared
honestly. COMET is never faked: when it cannot run, the result says ``None`` and why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

log = logging.getLogger(__name__)

#: BLEU tokenisers for targets that 13a cannot segment (no spaces between words).
_CJK_TOKENIZERS = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}


def bleu_tokenizer(tgt_lang: str) -> tuple[str, str | None]:
    """The sacrebleu tokeniser for a target language, and a note when a fallback was needed.

    ``zh`` -> ``zh``; ``ja``/``ko`` -> ``ja-mecab``/``ko-mecab`` when their extra dependencies are
    installed (``pip install sacrebleu[ja]`` / ``sacrebleu[ko]``), else ``char`` with a note (13a
    would treat a whole unsegmented sentence as one word); everything else -> ``13a``.
    """
    name = _CJK_TOKENIZERS.get(tgt_lang, "13a")
    if name.endswith("-mecab"):
        try:
            BLEU(tokenize=name)
        except (RuntimeError, ImportError):
            extra = name.split("-")[0]
            return "char", (
                f"BLEU tokenize='{name}' unavailable (pip install 'sacrebleu[{extra}]'); "
                "used tokenize='char' instead: not comparable with published mecab BLEU"
            )
    return name, None


def _check_lengths(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("no sentences to score")


def corpus_metrics(
    hyps: Sequence[str], refs: Sequence[str], tgt_lang: str, per_sentence: bool = True
) -> dict[str, Any]:
    """Corpus BLEU and chrF of ``hyps`` against one reference each, plus per-sentence scores.

    Returns ``{"bleu", "chrf", "signatures": {"bleu", "chrf"}, "tokenize", "n_sentences",
    "bleu_detail": {...}, "notes": [...], "per_sentence": {"bleu": [...], "chrf": [...]}}``.
    Corpus scores equal ``sacrebleu REF -i HYP -m bleu chrf --tokenize <tokenize>``. Sentence
    BLEU uses effective order (the usual choice for single sentences) and its own signature.
    """
    _check_lengths(hyps, refs)
    tokenize, note = bleu_tokenizer(tgt_lang)
    hyps, refs = list(hyps), list(refs)
    bleu = BLEU(tokenize=tokenize)
    chrf = CHRF()
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    result: dict[str, Any] = {
        "bleu": b.score,
        "chrf": c.score,
        "signatures": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
        "tokenize": tokenize,
        "n_sentences": len(hyps),
        "bleu_detail": {
            "precisions": list(b.precisions),
            "bp": b.bp,
            "sys_len": b.sys_len,
            "ref_len": b.ref_len,
        },
        "notes": [note] if note else [],
    }
    if per_sentence:
        sent_bleu = BLEU(tokenize=tokenize, effective_order=True)
        sent_chrf = CHRF()
        result["per_sentence"] = {
            "bleu": [sent_bleu.sentence_score(h, [r]).score for h, r in zip(hyps, refs, strict=True)],
            "chrf": [sent_chrf.sentence_score(h, [r]).score for h, r in zip(hyps, refs, strict=True)],
        }
        result["signatures"]["sentence_bleu"] = str(sent_bleu.get_signature())
    return result


def comet_available() -> bool:
    """Whether ``unbabel-comet`` can be imported (the optional ``comet`` extra)."""
    try:
        import comet  # noqa: F401
    except ImportError:
        return False
    return True


def check_comet_model(model: str | None) -> str | None:
    """Validate a configured COMET checkpoint path early; return a skip note or None if usable.

    A configured path that does not exist is an error (a typo must not silently drop COMET); a
    missing ``unbabel-comet`` package is a skip with a note (COMET is an optional extra).
    """
    if model is None:
        return "COMET skipped: evaluation.comet_model is not set (name a local COMET checkpoint to score it)"
    if not Path(model).exists():
        raise FileNotFoundError(f"evaluation.comet_model: no such COMET checkpoint {model!r}")
    if not comet_available():
        return "COMET skipped: unbabel-comet is not installed (pip install 'gdig[comet]')"
    return None


def comet_scores(
    sets: Sequence[tuple[Sequence[str], Sequence[str], Sequence[str]]],
    model: str | None,
    batch_size: int = 16,
    gpus: int | None = None,
) -> list[dict[str, Any]]:
    """COMET system and segment scores for several ``(sources, hypotheses, references)`` sets,
    loading the local checkpoint once (a ``.ckpt`` file, or a model directory holding
    ``checkpoints/model.ckpt``).

    Each result is ``{"comet": float | None, "comet_model": ..., "note": str | None,
    "per_sentence": [...]}``; ``comet`` is None, with the reason in ``note`` and no
    ``per_sentence``, when COMET is not configured or not installed.
    """
    for srcs, hyps, refs in sets:
        _check_lengths(hyps, refs)
        _check_lengths(srcs, refs)
    note = check_comet_model(model)
    if note is not None:
        log.warning(note)
        return [{"comet": None, "comet_model": model, "note": note} for _ in sets]
    from comet import load_from_checkpoint  # optional extra; checked above

    path = Path(model)  # type: ignore[arg-type]
    if path.is_dir():
        path = path / "checkpoints" / "model.ckpt"
    scorer = load_from_checkpoint(str(path))
    if gpus is None:
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
    results = []
    for srcs, hyps, refs in sets:
        data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(srcs, hyps, refs, strict=True)]
        out = scorer.predict(data, batch_size=batch_size, gpus=gpus, progress_bar=False)
        results.append({
            "comet": float(out.system_score),
            "comet_model": str(model),
            "note": None,
            "per_sentence": [float(x) for x in out.scores],
        })
    return results


def comet_score(
    srcs: Sequence[str], hyps: Sequence[str], refs: Sequence[str], model: str | None, batch_size: int = 16
) -> dict[str, Any]:
    """COMET of one set; see :func:`comet_scores`."""
    return comet_scores([(srcs, hyps, refs)], model, batch_size=batch_size)[0]
