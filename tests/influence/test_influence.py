"""Seed preconditioning and candidate scoring against independent per-example autograd."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from micro_models import micro_lm
from micro_models import stack_batches as _batches
from torch import nn

from gdig_core.config import CurvatureConfig, ScoringConfig
from gdig_core.influence.benefit import score_shard
from gdig_core.influence.factors import fit_factors
from gdig_core.influence.features import KroneckerProjector
from gdig_core.influence.hooks import layer_shape, select_tracked_modules
from gdig_core.influence.scores import read_scores
from gdig_core.influence.seed_preconditioning import Preconditioned, precondition_seeds

VOCAB, T = 40, 9
POISON = 39


def _model(arch: str = "llama") -> nn.Module:
    return micro_lm(arch, vocab=VOCAB, hidden=12, intermediate=20, max_positions=16)


def _examples(n: int, seed: int, prefix: str) -> list[tuple[str, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = T - i % 4
        prompt = 1 + i % 3
        ids = torch.randint(1, VOCAB - 1, (T,), generator=g)
        ids[length:] = 0
        mask = (torch.arange(T) < length).long()
        labels = torch.where(mask.bool(), ids, -100)
        labels[:prompt] = -100
        out.append((f"{prefix}{i}", {"input_ids": ids, "attention_mask": mask, "labels": labels}))
    return out


def _flat_grad(model, example, modules, normalisation) -> torch.Tensor:
    """Gradient of one example's loss w.r.t. the tracked weights, flattened, by plain autograd."""
    length = int(example["attention_mask"].sum())
    out = model(**{k: v[None, :length] for k, v in example.items()})
    n_tok = int((example["labels"][1:length] != -100).sum())
    loss = out.loss * n_tok if normalisation == "sequence" else out.loss
    grads = torch.autograd.grad(loss, [m.weight for m in modules.values()])
    return torch.cat([g.flatten() for g in grads]).double()


def _run(model, cfg, sc, seeds, cands, path, batch_size=3) -> tuple:
    tracked = select_tracked_modules(model, cfg)
    factors = fit_factors(model, lambda: _batches(seeds + cands, 4), tracked, cfg)
    precond = precondition_seeds(model, _batches(seeds, 2), factors, cfg, sc)
    summary = score_shard(model, _batches(cands, batch_size), precond, factors, sc, path)
    return read_scores(path), summary, precond, factors, tracked


@pytest.mark.parametrize(
    ("arch", "normalisation"), [("llama", "sequence"), ("llama", "token"), ("gemma3", "token")]
)
def test_identity_scores_equal_flat_autograd_dot_products(tmp_path, arch, normalisation):
    model = _model(arch)
    seeds, cands = _examples(3, 1, "s"), _examples(7, 2, "c")
    cfg = CurvatureConfig(method="identity")
    sc = ScoringConfig(loss_normalisation=normalisation, feature_dim=16)
    table, summary, *_, tracked = _run(model, cfg, sc, seeds, cands, tmp_path / "s.parquet")
    gs = torch.stack([_flat_grad(model, ex, tracked, normalisation) for _, ex in seeds])
    gz = torch.stack([_flat_grad(model, ex, tracked, normalisation) for _, ex in cands])
    expected = (gz @ gs.T).numpy()
    assert summary == {**summary, "n": 7, "n_ok": 7, "n_bad": 0}
    assert list(table.ids) == [c[0] for c in cands] and table.seed_ids == ["s0", "s1", "s2"]
    np.testing.assert_allclose(table.benefit, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    # Sign: a small step along -grad(z) lowers seed s's loss by about lr * b_s(z) (checked in fp64).
    model = model.double()
    s_id = int(np.argmax(np.abs(expected[0])))
    lr = 1e-5 / np.abs(expected[0, s_id])
    before = _seed_loss(model, seeds[s_id][1], normalisation)
    with torch.no_grad():
        offset = 0
        for mod in tracked.values():
            n = mod.weight.numel()
            mod.weight -= lr * gz[0, offset : offset + n].view_as(mod.weight)
            offset += n
    after = _seed_loss(model, seeds[s_id][1], normalisation)
    assert np.sign(before - after) == np.sign(expected[0, s_id])
    assert before - after == pytest.approx(lr * expected[0, s_id], rel=0.01)


def _seed_loss(model, example, normalisation) -> float:
    """The example's loss computed in the model's dtype (HF's own loss upcasts only to fp32)."""
    length = int(example["attention_mask"].sum())
    with torch.no_grad():
        logits = model(input_ids=example["input_ids"][None, :length]).logits[0, :-1]
    labels = example["labels"][1:length]
    loss = nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    n_tok = int((labels != -100).sum())
    return float(loss) / (1 if normalisation == "sequence" else n_tok)


def test_kfac_scores_equal_dense_inverse_and_loss_column(tmp_path):
    model = _model()
    seeds, cands = _examples(2, 1, "s"), _examples(5, 2, "c")
    cfg = CurvatureConfig(method="kfac", damping_factor=0.1)
    sc = ScoringConfig(loss_normalisation="sequence", feature_dim=16)
    table, _, precond, factors, tracked = _run(model, cfg, sc, seeds, cands, tmp_path / "s.parquet")
    expected = np.zeros((5, 2))
    for name, mod in tracked.items():
        q_a, q_g = factors.q_a[name].double(), factors.q_g[name].double()
        q = torch.kron(q_g, q_a)
        h_inv = q @ torch.diag(factors.inv_lambda[name].double().flatten()) @ q.T  # dense H^-1
        layer = {name: mod}
        v = torch.stack([h_inv @ _flat_grad(model, ex, layer, "sequence") for _, ex in seeds])
        gz = torch.stack([_flat_grad(model, ex, layer, "sequence") for _, ex in cands])
        expected += (gz @ v.T).numpy()
    np.testing.assert_allclose(table.benefit, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())
    for i, (_, ex) in enumerate(cands):
        length = int(ex["attention_mask"].sum())
        with torch.no_grad():
            ref = model(**{k: v[None, :length] for k, v in ex.items()}).loss
        assert table.loss[i] == pytest.approx(float(ref), rel=1e-5)
        assert table.n_tokens[i] == int((ex["labels"][1:] != -100).sum())


def test_shards_concatenated_equal_unsharded(tmp_path):
    model = _model()
    seeds, cands = _examples(3, 1, "s"), _examples(10, 2, "c")
    cfg = CurvatureConfig(method="ekfac")
    sc = ScoringConfig(feature_dim=24)
    whole, _, precond, factors, _ = _run(
        model, cfg, sc, seeds, cands, tmp_path / "whole.parquet", batch_size=4
    )
    parts = []
    for k, (lo, hi) in enumerate([(0, 3), (3, 7), (7, 10)]):
        parts.append(tmp_path / f"part{k}.parquet")
        score_shard(model, _batches(cands[lo:hi], 2), precond, factors, sc, parts[-1])
    joined = read_scores(parts)
    assert list(joined.ids) == list(whole.ids)
    np.testing.assert_allclose(joined.benefit, whole.benefit, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(joined.features, whole.features, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(joined.loss, whole.loss, rtol=1e-6)
    assert pq.ParquetFile(tmp_path / "whole.parquet").num_row_groups == 3  # streamed batch by batch


def test_seed_rank_compression(tmp_path):
    model = _model()
    seeds, cands = _examples(3, 1, "s"), _examples(4, 2, "c")
    cfg = CurvatureConfig(method="ekfac")
    exact, _, precond, factors, tracked = _run(
        model, cfg, ScoringConfig(), seeds, cands, tmp_path / "e.parquet"
    )
    # Full rank (>= min(out, in)): identical scores through the low-rank path.
    full = precondition_seeds(model, _batches(seeds, 3), factors, cfg, ScoringConfig(seed_rank=12))
    score_shard(model, _batches(cands, 4), full, factors, ScoringConfig(seed_rank=12), tmp_path / "f.parquet")
    np.testing.assert_allclose(
        read_scores(tmp_path / "f.parquet").benefit,
        exact.benefit,
        rtol=1e-4,
        atol=1e-6 * np.abs(exact.benefit).max(),
    )
    # Rank 1: scores equal <truncated-SVD V, dW_z> computed densely.
    low = precondition_seeds(model, _batches(seeds, 3), factors, cfg, ScoringConfig(seed_rank=1))
    assert all(low.left[n].shape[-1] == 1 for n in tracked)
    score_shard(model, _batches(cands, 4), low, factors, ScoringConfig(seed_rank=1), tmp_path / "r.parquet")
    expected = np.zeros((4, 3))
    for name, mod in tracked.items():
        u, s, vh = torch.linalg.svd(precond.full[name].double())
        v1 = (u[..., :1] * s[..., None, :1]) @ vh[..., :1, :]
        gz = torch.stack([_flat_grad(model, ex, {name: mod}, "sequence") for _, ex in cands])
        expected += (gz @ v1.reshape(3, -1).T).numpy()
    np.testing.assert_allclose(
        read_scores(tmp_path / "r.parquet").benefit, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max()
    )
    low.save(tmp_path / "low.safetensors")
    again = Preconditioned.load(tmp_path / "low.safetensors")
    assert again.rank == 1 and again.seed_ids == low.seed_ids
    torch.testing.assert_close(again.dense(name), low.dense(name))


def test_features_are_kronecker_projections_of_the_gradient(tmp_path):
    model = _model()
    seeds, cands = _examples(2, 1, "s"), _examples(4, 2, "c")
    sc = ScoringConfig(feature_dim=40, feature_seed=7)
    table, _, _, _, tracked = _run(
        model, CurvatureConfig(method="identity"), sc, seeds, cands, tmp_path / "s.parquet"
    )
    proj = KroneckerProjector({n: layer_shape(m) for n, m in tracked.items()}, 40, seed=7)
    expected = []
    for _, ex in cands:
        blocks = []
        for name, mod in tracked.items():
            g = _flat_grad(model, ex, {name: mod}, "sequence").float().view(1, *mod.weight.shape)
            blocks.append(proj.project_grad(name, g))
        expected.append(torch.cat(blocks, 1)[0])
    np.testing.assert_allclose(table.features, torch.stack(expected).numpy(), rtol=1e-4, atol=1e-6)
    assert table.features.shape == (4, 40)


def test_projection_preserves_squared_norm_in_expectation():
    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(1, 30, 20, generator=gen)
    ratios = []
    for seed in range(200):
        proj = KroneckerProjector({"w": (30, 20)}, 64, seed=seed)
        ratios.append(float(proj.project_grad("w", grad).square().sum() / grad.square().sum()))
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.05)


def test_bad_candidates_are_marked_and_do_not_poison_others(tmp_path):
    model = _model()
    with torch.no_grad():
        model.model.embed_tokens.weight[POISON] = float("nan")
    seeds, cands = _examples(2, 1, "s"), _examples(6, 2, "c")
    poisoned = list(cands)
    ex = {k: v.clone() for k, v in cands[1][1].items()}
    ex["input_ids"][2] = POISON
    poisoned[1] = ("nan", ex)
    empty = {k: v.clone() for k, v in cands[4][1].items()}
    empty["labels"][:] = -100
    poisoned[4] = ("empty", empty)
    cfg, sc = CurvatureConfig(method="ekfac"), ScoringConfig(feature_dim=8)
    tracked = select_tracked_modules(model, cfg)
    factors = fit_factors(model, lambda: _batches(poisoned, 3), tracked, cfg)
    clean_factors = fit_factors(
        model, lambda: _batches([c for i, c in enumerate(cands) if i not in (1, 4)], 3), tracked, cfg
    )
    for name in tracked:  # the bad rows did not enter the curvature either
        torch.testing.assert_close(
            factors.inv_lambda[name], clean_factors.inv_lambda[name], rtol=1e-4, atol=0
        )
    bad_seed = {k: v.clone() for k, v in seeds[0][1].items()}
    bad_seed["input_ids"][3] = POISON
    with_bad = precondition_seeds(model, _batches([("sbad", bad_seed)] + seeds, 2), factors, cfg, sc)
    precond = precondition_seeds(model, _batches(seeds, 2), factors, cfg, sc)
    assert with_bad.bad_seeds == {"sbad": "nonfinite_loss"} and with_bad.seed_ids == precond.seed_ids
    for name in tracked:
        scale = float(precond.full[name].abs().max())
        torch.testing.assert_close(with_bad.full[name], precond.full[name], rtol=1e-4, atol=1e-6 * scale)
    summary = score_shard(model, _batches(poisoned, 3), precond, factors, sc, tmp_path / "p.parquet")
    score_shard(model, _batches(cands, 3), precond, factors, sc, tmp_path / "c.parquet")
    got, ref = read_scores(tmp_path / "p.parquet"), read_scores(tmp_path / "c.parquet")
    assert summary["n_bad"] == 2 and summary["reasons"] == {"nonfinite_loss": 1, "no_target_tokens": 1}
    assert list(got.ok) == [True, False, True, True, False, True]
    assert got.bad_reason[1] == "nonfinite_loss" and got.bad_reason[4] == "no_target_tokens"
    good = got.ok
    np.testing.assert_allclose(got.benefit[good], ref.benefit[good], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.features[good], ref.features[good], rtol=1e-5, atol=1e-7)
    assert np.isfinite(got.benefit_mean[good]).all() and np.isnan(got.benefit[1]).all()


def test_bf16_autocast_scores_track_fp32(tmp_path):
    model = _model()
    seeds, cands = _examples(3, 1, "s"), _examples(8, 2, "c")
    cfg = CurvatureConfig(method="identity")
    fp32, *_ = _run(model, cfg, ScoringConfig(), seeds, cands, tmp_path / "a.parquet")
    bf16, *_ = _run(model, cfg, ScoringConfig(autocast="bfloat16"), seeds, cands, tmp_path / "b.parquet")
    corr = np.corrcoef(fp32.benefit.ravel(), bf16.benefit.ravel())[0, 1]
    assert corr > 0.99


def test_nonfinite_gradient_with_finite_loss_is_marked(tmp_path):
    """NaN injected into one candidate's last-position input of the last down_proj: finite loss,
    non-finite gradient. That row is marked, the others keep their clean scores."""
    model = _model()
    seeds, cands = _examples(2, 1, "s"), _examples(4, 2, "c")
    cfg, sc = CurvatureConfig(method="identity"), ScoringConfig(feature_dim=8)
    tracked = select_tracked_modules(model, cfg)
    factors = fit_factors(model, lambda: iter(()), tracked, cfg)
    precond = precondition_seeds(model, _batches(seeds, 2), factors, cfg, sc)
    score_shard(model, _batches(cands, 4), precond, factors, sc, tmp_path / "clean.parquet")

    def poison(module, inputs):
        x = inputs[0].clone()
        x[2, -1] = float("nan")
        return (x,)

    handle = model.get_submodule("model.layers.1.mlp.down_proj").register_forward_pre_hook(poison)
    try:
        summary = score_shard(model, _batches(cands, 4), precond, factors, sc, tmp_path / "bad.parquet")
    finally:
        handle.remove()
    got, ref = read_scores(tmp_path / "bad.parquet"), read_scores(tmp_path / "clean.parquet")
    assert summary["reasons"] == {"nonfinite_gradient": 1}
    assert list(got.ok) == [True, True, False, True] and got.bad_reason[2] == "nonfinite_gradient"
    assert np.isfinite(got.loss[2])  # the loss itself was fine and is kept
    keep = got.ok
    np.testing.assert_allclose(got.benefit[keep], ref.benefit[keep], rtol=1e-5, atol=1e-7)


def test_benchmark_script_runs_tiny(tmp_path):
    """The benchmark must keep working: the smallest --tiny run, kronfluence included."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "bench_influence.py"
    spec = importlib.util.spec_from_file_location("bench_influence", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        res = bench.main(
            [
                "--tiny",
                "--batch-size",
                "2",
                "--batches",
                "1",
                "--repeats",
                "1",
                "--seeds",
                "2",
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "b.json").read_text()) == res
    for key in ("train_step", "scoring", "factor_fit", "kronfluence_pairwise"):
        assert res[f"{key}_ex_per_s"] > 0
    assert res["tracked_layers"] == 12
