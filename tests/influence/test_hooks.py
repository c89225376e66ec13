"""Tracked-layer selection and (a, g) capture on tiny Llama, Gemma-3 and Qwen2 models."""

from __future__ import annotations

import pytest
import torch
from micro_models import micro_lm
from torch import nn

from gdig_core.config import CurvatureConfig
from gdig_core.influence.hooks import capture_batches, example_seed, select_tracked_modules
from gdig_core.influence.seed_preconditioning import per_example_grads
from gdig_core.training.losses import example_losses

VOCAB, T = 50, 9


def _model(arch: str, layers: int = 2) -> nn.Module:
    return micro_lm(arch, vocab=VOCAB, hidden=16, intermediate=24, layers=layers)


def _batch(n: int, seed: int = 0, prompt: int = 3) -> dict[str, torch.Tensor]:
    """Right-padded batch: example i has T - i % 3 real tokens, the first ``prompt`` masked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    labels = ids.clone()
    labels[:, :prompt] = -100
    for i in range(n):
        length = T - i % 3
        mask[i, length:] = 0
        labels[i, length:] = -100
        ids[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _row(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Example i alone, without its padding."""
    length = int(batch["attention_mask"][i].sum())
    return {k: v[i : i + 1, :length] for k, v in batch.items()}


def _autograd_grads(model, batch, modules) -> dict[str, torch.Tensor]:
    """Weight gradients of the summed target-token loss, by plain autograd."""
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    n_tok = int((batch["labels"][:, 1:] != -100).sum())
    (out.loss * n_tok).backward()  # HF's loss is the mean over target tokens
    grads = {}
    for name, mod in modules.items():
        gw = mod.weight.grad.clone()
        if mod.bias is not None:
            gw = torch.cat([gw, mod.bias.grad[:, None]], dim=1)
        grads[name] = gw
    model.zero_grad()
    return grads


def _captured_grads(model, tracked, batch) -> dict[str, torch.Tensor]:
    grads = {}

    def on_layer(ctx, name, a, g):
        m = ctx.token_mask[..., None]
        grads[name] = per_example_grads(torch.where(m, a, 0), torch.where(m, g, 0))

    list(capture_batches(model, tracked, [(["x"] * batch["input_ids"].shape[0], batch)], on_layer))
    return grads


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_mlp_preset_selects_all_mlp_linears(arch):
    model = _model(arch, layers=2)
    tracked = select_tracked_modules(model, CurvatureConfig())
    assert list(tracked) == [
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")
    ]
    assert all(isinstance(m, nn.Linear) for m in tracked.values())


def test_gdig_official_preset_and_custom_patterns():
    model = _model("llama", layers=7)
    official = select_tracked_modules(model, CurvatureConfig(preset="gdig-official"))
    assert list(official) == [f"model.layers.{i}.mlp.down_proj" for i in (0, 3, 6)]
    custom = select_tracked_modules(
        model, CurvatureConfig(preset="custom", modules=["*layers.1.self_attn.q_proj"])
    )
    assert list(custom) == ["model.layers.1.self_attn.q_proj"]
    with pytest.raises(ValueError, match="preset 'custom'"):
        select_tracked_modules(model, CurvatureConfig(modules=["*q_proj"]))
    with pytest.raises(ValueError, match="not nn.Linear"):
        select_tracked_modules(model, CurvatureConfig(preset="custom", modules=["*layers.0.mlp"]))
    with pytest.raises(ValueError, match="no nn.Linear"):
        select_tracked_modules(model, CurvatureConfig(preset="custom", modules=["*nothing"]))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_captured_gradient_equals_autograd_and_restores_flags(arch):
    model = _model(arch)
    # Qwen2's q_proj has a bias: checks the ones column appended to a.
    cfg = CurvatureConfig(preset="custom", modules=["*mlp.*_proj", "*self_attn.q_proj"])
    tracked = select_tracked_modules(model, cfg)
    assert any(m.bias is not None for m in tracked.values()) == (arch == "qwen2")
    batch = _batch(4)
    ref = _autograd_grads(model, batch, tracked)
    flags = [p.requires_grad for p in model.parameters()]
    got = _captured_grads(model, tracked, batch)
    assert [p.requires_grad for p in model.parameters()] == flags
    for name in tracked:
        summed = got[name].sum(0)
        assert summed.shape == ref[name].shape
        torch.testing.assert_close(summed, ref[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_padding_and_prompt_positions_contribute_nothing(arch):
    model = _model(arch)
    tracked = select_tracked_modules(model, CurvatureConfig())
    batch = _batch(3)
    batched = _captured_grads(model, tracked, batch)
    other_pads = {k: v.clone() for k, v in batch.items()}
    other_pads["input_ids"][other_pads["attention_mask"] == 0] = 7  # a different pad token
    repadded = _captured_grads(model, tracked, other_pads)
    for i in range(3):
        alone = _captured_grads(model, tracked, _row(batch, i))
        ref = _autograd_grads(model, _row(batch, i), tracked)
        for name in tracked:
            torch.testing.assert_close(batched[name][i], alone[name][0], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(repadded[name][i], batched[name][i], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(alone[name][0], ref[name], rtol=1e-4, atol=1e-6)
    # The prompt is masked: a loss over prompt tokens too would give a different gradient.
    unmasked = {k: v.clone() for k, v in batch.items()}
    unmasked["labels"][:, 1:3] = unmasked["input_ids"][:, 1:3]
    changed = _captured_grads(model, tracked, unmasked)
    name = next(iter(tracked))
    assert not torch.allclose(changed[name], batched[name], atol=1e-6)


def test_bf16_autocast_close_to_fp32():
    model = _model("llama")
    tracked = select_tracked_modules(model, CurvatureConfig())
    batch = _batch(4)
    fp32, bf16 = {}, {}

    def grab(store):
        def on_layer(ctx, name, a, g):
            m = ctx.token_mask[..., None]
            store[name] = per_example_grads(torch.where(m, a, 0).float(), torch.where(m, g, 0).float())

        return on_layer

    list(capture_batches(model, tracked, [(["a"] * 4, batch)], grab(fp32)))
    list(capture_batches(model, tracked, [(["a"] * 4, batch)], grab(bf16), autocast_dtype=torch.bfloat16))
    for name in tracked:
        rel = (bf16[name] - fp32[name]).norm() / fp32[name].norm()
        assert rel < 0.05, (name, float(rel))


def test_true_fisher_sampling_depends_on_example_id_not_batch():
    model = _model("llama")
    batch = _batch(4)
    ids = ["a", "b", "c", "d"]
    seeds = [example_seed(5, i) for i in ids]
    with torch.no_grad():
        full, _ = example_losses(model, batch, seeds)
        part, _ = example_losses(model, {k: v[2:] for k, v in batch.items()}, seeds[2:])
        observed, _ = example_losses(model, batch)
        other, _ = example_losses(model, batch, [example_seed(6, i) for i in ids])
    torch.testing.assert_close(full[2:], part)
    assert not torch.allclose(full, observed)
    assert not torch.allclose(full, other)
