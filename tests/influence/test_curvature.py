"""K-FAC / EK-FAC statistics, shard merging, damping and preconditioning against dense algebra."""

from __future__ import annotations

import pytest
import torch
from micro_models import micro_lm
from micro_models import stack_batches as _batches
from torch import nn

from gdig_core.config import CurvatureConfig
from gdig_core.influence.curvature import (
    N_BAD,
    N_EXAMPLES,
    covariance_stats,
    eigendecompose,
    lambda_stats,
    merge_stats,
    save_stats,
)
from gdig_core.influence.factors import finalize_factors, fit_factors, load_factors, save_factors
from gdig_core.influence.hooks import select_tracked_modules

VOCAB, T = 40, 8
POISON = 39  # token id whose embedding row is set to NaN in the bad-numerics test


def _model() -> nn.Module:
    return micro_lm(vocab=VOCAB, hidden=12, intermediate=20, max_positions=16)


def _examples(n: int, seed: int = 0) -> list[tuple[str, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = T - i % 3
        ids = torch.randint(1, VOCAB - 1, (T,), generator=g)
        ids[length:] = 0
        mask = (torch.arange(T) < length).long()
        labels = torch.where(mask.bool(), ids, -100)
        labels[:2] = -100
        out.append((f"e{seed}-{i}", {"input_ids": ids, "attention_mask": mask, "labels": labels}))
    return out


def _reference_stats(model, examples, name):
    """A and G sums of one layer by a direct forward hook + retain_grad and HF's own loss."""
    mod = model.get_submodule(name)
    store = {}
    handle = mod.register_forward_hook(lambda m, i, o: store.update(a=i[0].detach(), y=o))
    a_sum = g_sum = 0
    for _ids, batch in _batches(examples, len(examples)):
        out = model(**batch)
        store["y"].retain_grad()
        n_tok = int((batch["labels"][:, 1:] != -100).sum())
        (out.loss * n_tok).backward()
        m = batch["attention_mask"].bool()
        a, g = store["a"][m], store["y"].grad[m]
        a_sum, g_sum = a.T @ a, g.T @ g
        count = int(m.sum())
    handle.remove()
    model.zero_grad()
    return a_sum, g_sum, count


def test_covariance_sums_match_direct_computation():
    model = _model()
    examples = _examples(6)
    cfg = CurvatureConfig(method="ekfac")
    tracked = select_tracked_modules(model, cfg)
    stats = covariance_stats(model, _batches(examples, 4), tracked, cfg)
    for name in ("model.layers.0.mlp.gate_proj", "model.layers.1.mlp.down_proj"):
        a_ref, g_ref, count = _reference_stats(model, examples, name)
        torch.testing.assert_close(stats[f"{name}::A_sum"], a_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats[f"{name}::G_sum"], g_ref, rtol=1e-4, atol=1e-7)
        assert int(stats[f"{name}::A_count"]) == count == int(stats[f"{name}::G_count"])
    assert int(stats[N_EXAMPLES]) == 6 and int(stats[N_BAD]) == 0


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_three_shards_merged_equal_one(tmp_path, fisher):
    model = _model()
    examples = _examples(9)
    cfg = CurvatureConfig(method="ekfac", fisher=fisher, sampling_seed=3)
    tracked = select_tracked_modules(model, cfg)
    whole = covariance_stats(model, _batches(examples, 4), tracked, cfg)
    paths = []
    for k in range(3):  # shards of 3 with a different batch size: batching must not matter
        part = covariance_stats(model, _batches(examples[3 * k : 3 * k + 3], 2), tracked, cfg)
        paths.append(tmp_path / f"cov{k}.safetensors")
        save_stats(part, paths[-1])
    merged = merge_stats(paths)
    assert set(merged) == set(whole)
    for key in whole:
        # fp32 sums in another order (other shards, other batch sizes) differ by rounding
        # relative to the tensor's scale, not to each entry: near-zero entries need atol
        scale = float(whole[key].abs().max()) if whole[key].is_floating_point() else 0.0
        torch.testing.assert_close(merged[key], whole[key], rtol=1e-5, atol=1e-5 * max(scale, 1e-3))
    eigen = eigendecompose(merged, cfg)
    lam_whole = lambda_stats(model, _batches(examples, 4), tracked, eigen, cfg)
    lam_parts = [
        lambda_stats(model, _batches(examples[3 * k : 3 * k + 3], 3), tracked, eigen, cfg) for k in range(3)
    ]
    lam_merged = merge_stats(lam_parts)
    for key in lam_whole:
        torch.testing.assert_close(lam_merged[key], lam_whole[key], rtol=1e-5, atol=1e-8)
    f_whole = finalize_factors(cfg, list(tracked), eigendecompose(whole, cfg), lam_whole)
    f_merged = finalize_factors(cfg, list(tracked), eigen, lam_merged)
    for name in tracked:
        torch.testing.assert_close(f_merged.inv_lambda[name], f_whole.inv_lambda[name], rtol=1e-4, atol=0)


def _spd(n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, 2 * n, generator=gen, dtype=torch.float64)
    return x @ x.T / (2 * n)


def _layer_stats(name, a_mat, g_mat, count=10):
    return {
        f"{name}::A_sum": (a_mat * count).float(),
        f"{name}::A_count": torch.tensor([count]),
        f"{name}::G_sum": (g_mat * count).float(),
        f"{name}::G_count": torch.tensor([count]),
    }


@pytest.mark.parametrize(("mode", "factor"), [("relative", 0.1), ("absolute", 0.03)])
def test_kfac_precondition_equals_dense_kronecker_inverse(mode, factor):
    gen = torch.Generator().manual_seed(0)
    out_f, in_f = 5, 4
    a_mat, g_mat = _spd(in_f, gen), _spd(out_f, gen)
    cfg = CurvatureConfig(method="kfac", damping_mode=mode, damping_factor=factor)
    factors = finalize_factors(cfg, ["L"], eigendecompose(_layer_stats("L", a_mat, g_mat), cfg))
    # Mean of the eigenvalue products eG eA^T = trace(G)/out * trace(A)/in.
    damping = (
        factor * float(torch.trace(g_mat) / out_f * torch.trace(a_mat) / in_f)
        if mode == "relative"
        else factor
    )
    assert factors.damping["L"] == pytest.approx(damping, rel=1e-5)
    # Row-major vec of a [out, in] gradient: the K-FAC Fisher is kron(G, A).
    h = torch.kron(g_mat, a_mat) + damping * torch.eye(out_f * in_f, dtype=torch.float64)
    grads = torch.randn(3, out_f, in_f, generator=gen, dtype=torch.float64)
    dense = torch.linalg.solve(h, grads.reshape(3, -1).T).T.reshape(3, out_f, in_f)
    got = factors.precondition("L", grads.float())
    torch.testing.assert_close(got.double(), dense, rtol=1e-4, atol=1e-5)


def test_ekfac_lambda_and_precondition_equal_dense_computation():
    model = _model()
    examples = _examples(7)
    cfg = CurvatureConfig(method="ekfac", damping_factor=0.1)
    tracked = select_tracked_modules(model, cfg)
    name = "model.layers.1.mlp.up_proj"
    eigen = eigendecompose(covariance_stats(model, _batches(examples, 3), tracked, cfg), cfg)
    lam = lambda_stats(model, _batches(examples, 3), tracked, eigen, cfg)
    # Per-example gradients by plain autograd, one example at a time, then rotate and square.
    q_a, q_g = eigen[f"{name}::QA"].double(), eigen[f"{name}::QG"].double()
    mod = model.get_submodule(name)
    lam_ref = 0
    grads = []
    for _id, ex in examples:
        length = int(ex["attention_mask"].sum())
        out = model(**{k: v[None, :length] for k, v in ex.items()})
        n_tok = int((ex["labels"][1:length] != -100).sum())
        (gw,) = torch.autograd.grad(out.loss * n_tok, mod.weight)
        grads.append(gw.double())
        lam_ref = lam_ref + (q_g.T @ gw.double() @ q_a) ** 2
    lam_ref = lam_ref / len(examples)
    assert int(lam[f"{name}::L_count"]) == 7
    torch.testing.assert_close(lam[f"{name}::L_sum"].double() / 7, lam_ref, rtol=1e-4, atol=1e-9)
    factors = finalize_factors(cfg, list(tracked), eigen, lam)
    damping = 0.1 * float(lam_ref.mean())
    q = torch.kron(q_g, q_a)  # eigenbasis of the row-major vec
    h = q @ torch.diag(lam_ref.flatten() + damping) @ q.T
    g = torch.stack(grads[:2])
    dense = torch.linalg.solve(h, g.reshape(2, -1).T).T.reshape(g.shape)
    torch.testing.assert_close(factors.precondition(name, g.float()).double(), dense, rtol=2e-3, atol=1e-6)


def test_nan_example_is_dropped_and_counted_not_merged():
    model = _model()
    with torch.no_grad():
        model.model.embed_tokens.weight[POISON] = float("nan")
    clean = _examples(6)
    poisoned = list(clean)
    _, bad = poisoned[2]
    bad = {k: v.clone() for k, v in bad.items()}
    bad["input_ids"][4] = POISON
    poisoned[2] = ("poisoned", bad)
    cfg = CurvatureConfig(method="ekfac")
    tracked = select_tracked_modules(model, cfg)
    got = covariance_stats(model, _batches(poisoned, 3), tracked, cfg)
    ref = covariance_stats(model, _batches(clean[:2] + clean[3:], 3), tracked, cfg)
    assert int(got[N_BAD]) == 1 and int(got[N_EXAMPLES]) == 5
    for key, value in ref.items():
        if key.endswith(("_sum", "_count")):
            assert torch.isfinite(got[key].float()).all()
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
    eigen = eigendecompose(got, cfg)
    lam = lambda_stats(model, _batches(poisoned, 3), tracked, eigen, cfg)
    lam_ref = lambda_stats(model, _batches(clean[:2] + clean[3:], 3), tracked, eigen, cfg)
    for name in tracked:
        torch.testing.assert_close(lam[f"{name}::L_sum"], lam_ref[f"{name}::L_sum"], rtol=1e-5, atol=1e-9)


def test_factors_round_trip_and_identity(tmp_path):
    model = _model()
    cfg = CurvatureConfig(method="kfac")
    tracked = select_tracked_modules(model, cfg)
    factors = fit_factors(model, lambda: _batches(_examples(5), 5), tracked, cfg)
    save_factors(factors, tmp_path / "f.safetensors")
    loaded = load_factors(tmp_path / "f.safetensors")
    assert loaded.method == "kfac" and loaded.modules == list(tracked) and loaded.damping == factors.damping
    grad = torch.randn(2, 20, 12)
    name = "model.layers.0.mlp.gate_proj"
    torch.testing.assert_close(loaded.precondition(name, grad), factors.precondition(name, grad))
    ident = fit_factors(model, lambda: _batches(_examples(2), 2), tracked, CurvatureConfig(method="identity"))
    save_factors(ident, tmp_path / "i.safetensors")
    torch.testing.assert_close(load_factors(tmp_path / "i.safetensors").precondition(name, grad), grad)


def test_finite_loss_but_nonfinite_activations_take_the_careful_path():
    """NaN injected into one example's last-position input of the last down_proj leaves its loss
    finite (that position predicts nothing) but makes a and g non-finite in that layer: the
    example must be dropped from that layer's statistics (and counted), on the unmasked path."""
    model = _model()
    name = "model.layers.1.mlp.down_proj"
    examples = [(f"u{i}", ex) for i, (_, ex) in enumerate(_examples(12)) if ex["attention_mask"].all()]
    assert len(examples) == 4  # unpadded: the batch takes the fast path

    def poison(module, inputs):
        x = inputs[0].clone()
        if x.shape[0] == 4:
            x[1, -1] = float("nan")
        return (x,)

    cfg = CurvatureConfig(method="ekfac")
    tracked = select_tracked_modules(model, cfg)
    handle = model.get_submodule(name).register_forward_pre_hook(poison)
    try:
        got = covariance_stats(model, _batches(examples, 4), tracked, cfg)
        eigen = eigendecompose(got, cfg)
        lam = lambda_stats(model, _batches(examples, 4), tracked, eigen, cfg)
    finally:
        handle.remove()
    clean = [examples[0]] + examples[2:]
    ref = covariance_stats(model, _batches(clean, 3), tracked, cfg)
    lam_ref = lambda_stats(model, _batches(clean, 3), tracked, eigen, cfg)
    assert int(got[N_BAD]) == 0  # the loss was fine ...
    assert int(got[f"{name}::n_bad"]) == 1 and int(lam[f"{name}::L_n_bad"]) == 1  # ... this layer was not
    for key in (f"{name}::A_sum", f"{name}::G_sum", f"{name}::A_count"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lam[f"{name}::L_sum"], lam_ref[f"{name}::L_sum"], rtol=1e-5, atol=1e-9)
    assert int(lam[f"{name}::L_count"]) == 3
    for layer in tracked:  # NaN gradients also reach earlier layers through attention: same rule
        assert torch.isfinite(got[f"{layer}::A_sum"]).all() and torch.isfinite(lam[f"{layer}::L_sum"]).all()
        assert int(lam[f"{layer}::L_count"]) + int(lam[f"{layer}::L_n_bad"]) == 4
