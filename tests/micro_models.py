"""Micro causal LMs (random weights, seeded) for the influence-engine tests."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)


def micro_lm(
    arch: str = "llama",
    *,
    vocab: int,
    hidden: int,
    intermediate: int,
    layers: int = 2,
    max_positions: int = 32,
) -> nn.Module:
    """A 2-head (1 KV head) model of ``arch`` in eval mode, identical for identical arguments."""
    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_positions,
    )
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    if arch == "gemma3":
        return Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=hidden // 2, sliding_window=4)).eval()
    raise ValueError(f"unknown architecture {arch!r}")


def stack_batches(examples: list[tuple[str, dict[str, torch.Tensor]]], batch_size: int):
    """``(ids, batch)`` pairs from single examples of equal length, in order."""
    for s in range(0, len(examples), batch_size):
        chunk = examples[s : s + batch_size]
        yield [c[0] for c in chunk], {k: torch.stack([c[1][k] for c in chunk]) for k in chunk[0][1]}
