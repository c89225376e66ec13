"""Score variants in one pass equal separate runs and independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from micro_models import micro_lm
from micro_models import stack_batches as _batches
from test_influence import _examples, _flat_grad

from gdig_core.config import CurvatureConfig, ScoringConfig
from gdig_core.influence.benefit import score_shard
from gdig_core.influence.factors import fit_factor_set, fit_factors
from gdig_core.influence.hooks import select_tracked_modules
from gdig_core.influence.scores import read_scores
from gdig_core.influence.seed_preconditioning import precondition_seeds
from gdig_core.influence.variants import parse_variant, score_variants

VARIANTS = ["ekfac-raw", "kfac-raw", "identity-raw", "ekfac-token", "kfac-cosine", "identity-cosine", "identity-token"]


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def setting():
    model = micro_lm("llama", vocab=40, hidden=12, intermediate=20, max_positions=16)
    seeds, cands = _examples(4, 1, "s"), _examples(9, 2, "c")
    cfg = CurvatureConfig(method="ekfac")
    tracked = select_tracked_modules(model, cfg)
    return model, seeds, cands, cfg, tracked


def test_variant_names_parse_and_reject() -> None:
    assert parse_variant("kfac-cosine").name == "kfac-cosine"
    with pytest.raises(ValueError, match="curvature"):
        parse_variant("ekfac")
    with pytest.raises(ValueError, match="normalisation"):
        parse_variant("ekfac-l2")
    assert [v.name for v in score_variants("ekfac", ["identity-raw", "ekfac-raw"])] == ["ekfac-raw", "identity-raw"]


def test_one_pass_equals_separate_runs(setting, tmp_path) -> None:
    model, seeds, cands, cfg, tracked = setting
    sc = ScoringConfig(feature_dim=8)
    factors = fit_factor_set(model, lambda: _batches(seeds + cands, 4), tracked, cfg, ["ekfac", "kfac", "identity"])
    precond = precondition_seeds(model, _batches(seeds, 3), factors, cfg, sc)
    variants = score_variants("ekfac", VARIANTS)
    score_shard(model, _batches(cands, 4), precond, None, sc, tmp_path / "all.parquet", variants=variants)
    together = read_scores(tmp_path / "all.parquet")
    assert list(together.variants) == [v.name for v in variants]

    for method in ("ekfac", "kfac", "identity"):
        single_cfg = CurvatureConfig(method=method)
        alone = fit_factors(model, lambda: _batches(seeds + cands, 4), tracked, single_cfg)
        pre = precondition_seeds(model, _batches(seeds, 3), alone, single_cfg, sc)
        path = tmp_path / f"{method}.parquet"
        score_shard(model, _batches(cands, 4), pre, alone, sc, path)
        sep = read_scores(path)
        stats = together.variants[f"{method}-raw"]
        assert _rel_err(stats["mean"], sep.benefit_mean) < 1e-5
        np.testing.assert_array_equal(stats["frac_pos"], sep.benefit_frac_pos)
        assert _rel_err(stats["min"], sep.benefit_min) < 1e-5
        if method == "ekfac":  # the primary variant fills the full benefit matrix
            assert _rel_err(together.benefit, sep.benefit) < 1e-5


def test_token_variant_equals_per_token_loss_run(setting, tmp_path) -> None:
    """Per-token normalisation by rescaling equals capturing the per-token loss on both sides."""
    model, seeds, cands, cfg, tracked = setting
    sc = ScoringConfig(feature_dim=8, variants=["identity-token", "ekfac-token"])
    factors = fit_factor_set(model, lambda: _batches(seeds + cands, 4), tracked, cfg, ["ekfac", "identity"])
    precond = precondition_seeds(model, _batches(seeds, 3), factors, cfg, sc)
    score_shard(model, _batches(cands, 4), precond, None, sc, tmp_path / "v.parquet",
                variants=score_variants("ekfac", sc.variants))
    table = read_scores(tmp_path / "v.parquet")
    tok = ScoringConfig(feature_dim=8, loss_normalisation="token")
    for method in ("identity", "ekfac"):
        pre = precondition_seeds(model, _batches(seeds, 3), factors[method], cfg, tok)
        score_shard(model, _batches(cands, 4), pre, None, tok, tmp_path / f"{method}-tok.parquet")
        direct = read_scores(tmp_path / f"{method}-tok.parquet")
        assert _rel_err(table.variants[f"{method}-token"]["mean"], direct.benefit_mean) < 1e-5


def test_identity_cosine_is_the_cosine_of_flat_gradients(setting, tmp_path) -> None:
    model, seeds, cands, cfg, tracked = setting
    sc = ScoringConfig(feature_dim=8, variants=["identity-cosine"])
    factors = fit_factor_set(model, lambda: _batches(seeds + cands, 4), tracked, CurvatureConfig(method="identity"),
                             ["identity"])
    precond = precondition_seeds(model, _batches(seeds, 3), factors, cfg, sc)
    score_shard(model, _batches(cands, 4), precond, None, sc, tmp_path / "c.parquet",
                variants=score_variants("identity", sc.variants))
    table = read_scores(tmp_path / "c.parquet")
    gs = torch.stack([_flat_grad(model, ex, tracked, "sequence") for _, ex in seeds])
    gz = torch.stack([_flat_grad(model, ex, tracked, "sequence") for _, ex in cands])
    cos = (gz / gz.norm(dim=1, keepdim=True)) @ (gs / gs.norm(dim=1, keepdim=True)).T
    assert _rel_err(table.variants["identity-cosine"]["mean"], cos.mean(1).numpy()) < 1e-4
    assert _rel_err(table.grad_norm, gz.norm(dim=1).numpy()) < 1e-4
    assert np.all(np.abs(table.variants["identity-cosine"]["min"]) <= 1 + 1e-6)


def test_low_rank_seeds_give_the_same_candidate_norms(setting, tmp_path) -> None:
    """The Gram-trick gradient norm of the low-rank path equals the dense one."""
    model, seeds, cands, cfg, tracked = setting
    factors = fit_factor_set(model, lambda: _batches(seeds + cands, 4), tracked, cfg, ["identity"])
    dense = ScoringConfig(feature_dim=8)
    lowrank = ScoringConfig(feature_dim=8, seed_rank=1)
    for name, sc in (("dense", dense), ("lowrank", lowrank)):
        pre = precondition_seeds(model, _batches(seeds, 3), factors, cfg, sc)
        score_shard(model, _batches(cands, 4), pre, None, sc, tmp_path / f"{name}.parquet")
    a, b = read_scores(tmp_path / "dense.parquet"), read_scores(tmp_path / "lowrank.parquet")
    assert _rel_err(b.grad_norm, a.grad_norm) < 1e-5


def test_missing_preconditioner_is_named(setting, tmp_path) -> None:
    model, seeds, cands, cfg, tracked = setting
    factors = fit_factor_set(model, lambda: _batches(seeds, 4), tracked, cfg, ["identity"])
    pre = precondition_seeds(model, _batches(seeds, 3), factors, cfg, ScoringConfig(feature_dim=8))
    with pytest.raises(ValueError, match="ekfac"):
        score_shard(model, _batches(cands, 4), pre, None, ScoringConfig(feature_dim=8), tmp_path / "x.parquet",
                    variants=score_variants("identity", ["ekfac-raw"]))
