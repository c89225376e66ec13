"""Batched translation with a causal LM: greedy or beam search, left padding, prompt stripped.

Where a translation ends: the G-DIG prompt ends with ``"\\n\\n"`` and the target follows it on
the same line, and training examples end with EOS. So generation stops at EOS, or at the first
newline *after the translation has started* (leading whitespace/newlines are skipped, since an
untrained model may emit them before any text), or after ``max_new_tokens``. The returned text is
what lies between: the generated continuation with leading whitespace removed, cut at its first
newline, and stripped. The prompt is never part of it.
"""

from __future__ import annotations

import logging
import math
import re
import weakref
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from gdig_core.config import GdigConfig
from gdig_core.data.encoding import prompt_ids

log = logging.getLogger(__name__)

_TOKEN_CLASS_CACHE: weakref.WeakKeyDictionary[Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def newline_token_classes(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per vocabulary id: ``has_newline``, ``is_blank`` (decodes to whitespace or nothing) and
    ``text_then_newline`` (holds text followed by a newline, e.g. ``".\\n"``). Cached per tokenizer
    object (decoding a 262k vocabulary once takes about a second)."""
    cached = _TOKEN_CLASS_CACHE.get(tokenizer)
    if cached is None:
        size = len(tokenizer)
        pieces = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=True)
        has_nl = torch.tensor(["\n" in p for p in pieces], dtype=torch.bool)
        blank = torch.tensor([p.strip() == "" for p in pieces], dtype=torch.bool)
        text_nl = torch.tensor(["\n" in p.lstrip() for p in pieces], dtype=torch.bool)
        cached = (has_nl, blank, text_nl)
        _TOKEN_CLASS_CACHE[tokenizer] = cached
    return cached


class EndOfLineCriteria(StoppingCriteria):
    """Stop a sequence once a newline follows non-blank generated text (see the module doc).

    Stateless (recomputed from the generated tokens at every step), so it is correct under beam
    search, where rows are reordered between steps.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, device: torch.device | str = "cpu"):
        # One extra entry (index = vocab size): ids beyond the tokenizer count as ordinary text.
        self.has_nl, self.blank, self.text_nl = (
            torch.cat([t, torch.zeros(1, dtype=torch.bool)]).to(device) for t in newline_token_classes(tokenizer)
        )
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :]
        if new.shape[1] == 0:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.has_nl.device != new.device:
            self.has_nl, self.blank, self.text_nl = (t.to(new.device) for t in (self.has_nl, self.blank, self.text_nl))
        new = new.clamp(0, len(self.has_nl) - 1)
        content = ~self.blank[new]
        # Text seen strictly before each position.
        seen_before = (content.long().cumsum(dim=1) - content.long()) > 0
        done = (self.has_nl[new] & seen_before) | self.text_nl[new]
        return done.any(dim=1)


def cut_translation(text: str) -> str:
    """The translation inside a generated continuation: skip leading whitespace, stop at the
    first newline (``\\n`` or ``\\r``, so outputs stay one per line in any reader), strip."""
    return re.split(r"[\r\n]", text.lstrip(), maxsplit=1)[0].strip()


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask`` [B, T]."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids, mask


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        for i in source if isinstance(source, list | tuple) else [source]:
            if i not in ids:
                ids.append(int(i))
    return ids


@torch.no_grad()
def generate_translations(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    src_lang: str,
    tgt_lang: str,
    cfg: GdigConfig,
    *,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Translate ``sources`` (one string each) with the G-DIG prompt; returns one line each.

    Batched (longest prompts first, to bound padding), left-padded, deterministic (greedy, or
    beam search when ``num_beams`` > 1). Defaults come from ``cfg.evaluation``; each batch stops
    after ``max_new_tokens_ratio`` x its longest source (in tokens) + 8 new tokens at the most. Prompts are built
    exactly as in training (``encoding.prompt_ids``: BOS prepended when ``cfg.model.add_bos``) and
    cut to ``cfg.prompt.max_length`` tokens from ``cfg.prompt.truncation_side``. On CUDA, bf16
    autocast per ``cfg.evaluation.bf16`` (default: when supported).
    """
    ev = cfg.evaluation
    batch_size = batch_size or ev.batch_size
    max_new_tokens = max_new_tokens or ev.max_new_tokens
    num_beams = num_beams or ev.num_beams
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    device = next(model.parameters()).device
    keep_bos = 1 if cfg.model.add_bos and tokenizer.bos_token_id is not None else 0

    prompts = []
    ratio = ev.max_new_tokens_ratio
    # A batch decodes until its longest row stops: cap each batch by its sources' length, so one
    # degenerate row (repeating until max_new_tokens) cannot hold the whole batch for long.
    src_len = [len(tokenizer(src, add_special_tokens=False)["input_ids"]) for src in sources] if ratio else []
    for src in sources:
        ids = prompt_ids(tokenizer, cfg, src, src_lang, tgt_lang)
        limit = cfg.prompt.max_length
        if len(ids) > limit:
            body = ids[keep_bos:]
            cut = len(ids) - limit
            body = body[cut:] if cfg.prompt.truncation_side == "left" else body[: len(body) - cut]
            ids = ids[:keep_bos] + body
        prompts.append(ids)

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    eos_ids = _eos_ids(model, tokenizer)
    bf16 = cfg.evaluation.bf16
    if bf16 is None:
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    bf16 = bf16 and device.type == "cuda"  # CPU generation runs in the model's dtype
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc="generate", unit="sent", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            input_ids, mask = left_pad([prompts[i] for i in idx], pad_id)
            input_ids, mask = input_ids.to(device), mask.to(device)
            prompt_len = input_ids.shape[1]
            limit = max_new_tokens
            if ratio:
                limit = min(max_new_tokens, math.ceil(ratio * max(src_len[i] for i in idx)) + 8)
            with autocast():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=limit,
                    num_beams=num_beams,
                    do_sample=False,
                    eos_token_id=eos_ids or None,
                    pad_token_id=pad_id,
                    stopping_criteria=StoppingCriteriaList([EndOfLineCriteria(tokenizer, prompt_len, device)]),
                    # Greedy/beam settings only: silence sampling defaults from generation_config.
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            texts = tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
            for i, text in zip(idx, texts, strict=True):
                outputs[i] = cut_translation(text)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return outputs
