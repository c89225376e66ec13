"""Prompt template, tokenisation with the prompt mask, truncation, and length-bucketed batches.

An example is ``[BOS] prompt target [EOS]``; labels are -100 on BOS and prompt tokens so the loss
covers only the target (and the EOS that teaches the model to stop).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gdig_core.config import GdigConfig

IGNORE_INDEX = -100


@dataclass
class EncodedPair:
    id: str
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool = False

    @property
    def n_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def build_prompt(cfg: GdigConfig, src: str, src_lang: str, tgt_lang: str) -> str:
    """The G-DIG instruction for one source sentence (configurable via ``prompt.template``)."""
    return cfg.prompt.template.format(
        src=src,
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        src_lang_name=cfg.language_name(src_lang),
        tgt_lang_name=cfg.language_name(tgt_lang),
    )


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, cfg: GdigConfig, src: str, src_lang: str, tgt_lang: str) -> list[int]:
    """Token ids of ``[BOS] prompt``: what generation is conditioned on."""
    ids = _tokens(tokenizer, build_prompt(cfg, src, src_lang, tgt_lang))
    if cfg.model.add_bos and tokenizer.bos_token_id is not None:
        # Some tokenizers (Gemma's GGUF one) do not add BOS themselves; the model needs it.
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def _truncate(prompt: list[int], target: list[int], max_length: int, side: str, keep_first: int) -> tuple[list[int], list[int], bool]:
    """Fit prompt+target into max_length: shorten the prompt (down to half the budget) from
    ``side`` first, then the target from the right. ``keep_first`` leading tokens (BOS) stay."""
    if len(prompt) + len(target) <= max_length:
        return prompt, target, False
    prompt_floor = min(len(prompt), max(max_length // 2, max_length - len(target)))
    cut = len(prompt) - prompt_floor
    if cut > 0:
        head, body = prompt[:keep_first], prompt[keep_first:]
        body = body[cut:] if side == "left" else body[: len(body) - cut]
        prompt = head + body
    target = target[: max(max_length - len(prompt), 1)]
    return prompt, target, True


def encode_pairs(tokenizer: Any, rows: Iterable[Mapping[str, Any]], cfg: GdigConfig) -> list[EncodedPair]:
    """Tokenise pairs (dicts with id, src_lang, tgt_lang, src, tgt) into masked training examples.

    The target is tokenised separately from the prompt so the mask boundary is exact, and ends
    with EOS. Over-long examples are truncated per ``prompt.truncation_side`` and flagged.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    has_bos = cfg.model.add_bos and tokenizer.bos_token_id is not None
    out = []
    for row in rows:
        prompt = prompt_ids(tokenizer, cfg, row["src"], row["src_lang"], row["tgt_lang"])
        target = _tokens(tokenizer, row["tgt"]) + eos
        prompt, target, truncated = _truncate(
            prompt, target, cfg.prompt.max_length, cfg.prompt.truncation_side, 1 if has_bos else 0
        )
        out.append(
            EncodedPair(
                id=str(row["id"]),
                input_ids=prompt + target,
                labels=[IGNORE_INDEX] * len(prompt) + target,
                prompt_len=len(prompt),
                truncated=truncated,
            )
        )
    return out


def collate(encoded: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` [B,T], ``attention_mask`` [B,T], ``labels`` [B,T] (-100 on pad)."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def length_batches(encoded: Sequence[EncodedPair], batch_size: int, seed: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding). With ``seed`` the batch
    order is shuffled reproducibly (training); without, batches come shortest first (scoring)."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i].input_ids), i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if seed is not None:
        perm = np.random.default_rng(seed).permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def iter_batches(
    encoded: Sequence[EncodedPair], batch_size: int, pad_id: int, seed: int | None = None
) -> Iterator[tuple[list[str], dict[str, torch.Tensor]]]:
    """``(ids, batch)`` pairs over length-bucketed batches, the form the influence engine takes."""
    for idx in length_batches(encoded, batch_size, seed):
        chunk = [encoded[i] for i in idx]
        yield [e.id for e in chunk], collate(chunk, pad_id)
