"""A real but weak translation system, for the ``low_quality_mt`` noise kind.

A small base LM (Gemma-3-270M in the experiments) prompted few-shot with two short invented
example pairs and decoded greedily. Its output is plausible but clearly worse than human
references (2-shot Gemma-3-270M: 18.4 BLEU on 16 short de-en pool pairs, as measured for issue
10). Zero-shot with the G-DIG prompt is no option: that model then emits the constant ``Text:``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gdig_core.config import LANGUAGE_NAMES, GdigConfig, ModelConfig, PromptConfig

#: Two short invented sentences (from no dataset) per language, the same meaning in each.
EXAMPLE_SENTENCES: dict[str, tuple[str, str]] = {
    "en": ("The house is small.", "I have no time today."),
    "de": ("Das Haus ist klein.", "Ich habe heute keine Zeit."),
    "zh": ("这所房子很小。", "我今天没有时间。"),
    "fr": ("La maison est petite.", "Je n'ai pas le temps aujourd'hui."),
    "es": ("La casa es pequeña.", "Hoy no tengo tiempo."),
    "cs": ("Dům je malý.", "Dnes nemám čas."),
    "ru": ("Дом маленький.", "У меня сегодня нет времени."),
    "uk": ("Будинок маленький.", "Сьогодні я не маю часу."),
    "ja": ("その家は小さい。", "今日は時間がありません。"),
}


def few_shot_template(src_lang: str, tgt_lang: str, shots: Sequence[tuple[str, str]] | None = None) -> str:
    """The prompt template (``{src}`` left to fill): the example pairs, then the source.

    ``shots`` are (source, target) example pairs; by default the two of ``EXAMPLE_SENTENCES``.
    """
    for code in (src_lang, tgt_lang):
        if code not in LANGUAGE_NAMES:
            raise ValueError(f"no language name for {code!r}; known: {', '.join(LANGUAGE_NAMES)}")
    if shots is None:
        missing = [c for c in (src_lang, tgt_lang) if c not in EXAMPLE_SENTENCES]
        if missing:
            raise ValueError(f"no built-in example sentences for {missing}; pass shots=[(src, tgt), ...]")
        shots = list(zip(EXAMPLE_SENTENCES[src_lang], EXAMPLE_SENTENCES[tgt_lang], strict=True))
    if not shots:
        raise ValueError("few-shot prompting needs at least one example pair")
    s_name, t_name = LANGUAGE_NAMES[src_lang], LANGUAGE_NAMES[tgt_lang]

    def escape(text: str) -> str:  # the template goes through str.format
        return text.replace("{", "{{").replace("}", "}}")

    blocks = [f"{s_name}: {escape(s)}\n{t_name}: {escape(t)}\n\n" for s, t in shots]
    return "".join(blocks) + f"{s_name}: {{src}}\n{t_name}:"


def weak_translator(
    model_cfg: ModelConfig,
    src_lang: str,
    tgt_lang: str,
    *,
    shots: Sequence[tuple[str, str]] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 96,
    path: str | Path | None = None,
    progress: bool = False,
) -> Callable[[list[str]], list[str]]:
    """A function translating a list of sources, one line each: ``model_cfg``'s model (or the
    checkpoint at ``path``), loaded once on the first call, prompted with ``few_shot_template``,
    greedy. Generation stops at the first newline after text starts (the next example would
    follow), and BOS is prepended per ``model_cfg.add_bos``. ``progress`` shows a progress bar."""
    # A long prompt limit: cutting an over-long prompt from the left would drop the examples.
    prompt = PromptConfig(template=few_shot_template(src_lang, tgt_lang, shots), max_length=2048)
    cfg = GdigConfig(model=model_cfg, prompt=prompt)
    loaded: dict[str, Any] = {}

    def translate(sources: list[str]) -> list[str]:
        from gdig_core.evaluation.generation import generate_translations
        from gdig_core.training.models import load_model

        sources = list(sources)
        if not sources:
            return []
        if not loaded:
            loaded["model"], loaded["tokenizer"] = load_model(model_cfg, path=path)
        return generate_translations(
            loaded["model"], loaded["tokenizer"], sources, src_lang, tgt_lang, cfg,
            batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=1, progress=progress,
        )

    return translate


def read_hypotheses(path: str | Path) -> dict[str, str]:
    """A weak system's translations from JSONL lines ``{"id": ..., "hyp": ...}`` (blank lines
    skipped); any other line is a ``DataError`` naming it."""
    from gdig_core.data.pairs import DataError, RowProblem
    from gdig_core.data.readers import _read_jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    hyps: dict[str, str] = {}
    for number, item in _read_jsonl(path):
        if isinstance(item, RowProblem):
            if item.reason == "empty line" and not item.raw.strip():
                continue
            raise item.as_error()
        key, hyp = item.get("id"), item.get("hyp")
        if not isinstance(key, str | int) or isinstance(key, bool) or str(key) == "":
            raise DataError(path, number, "id", "missing, or not a string or integer")
        if not isinstance(hyp, str):
            raise DataError(path, number, "hyp", "missing, or not a string")
        if str(key) in hyps:
            raise DataError(path, number, "id", f"repeated id {key!r}")
        hyps[str(key)] = hyp
    return hyps
