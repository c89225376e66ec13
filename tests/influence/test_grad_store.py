"""The projected gradient store: the store path equals the exact path when the projection is the
identity; with a real projection it computes exactly the projected benefit; projected factors are
fitted in the exact factors' own passes without changing them."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from micro_models import micro_lm
from micro_models import stack_batches as _batches
from test_influence import _examples, _flat_grad

from gdig_core.config import CurvatureConfig, GradientStoreConfig, ScoringConfig
from gdig_core.influence.benefit import score_shard
from gdig_core.influence.curvature import covariance_stats, eigendecompose, lambda_stats
from gdig_core.influence.factors import (
    finalize_factors,
    finalize_projected_factors,
    load_factors,
    save_factors,
)
from gdig_core.influence.features import gradient_projection, kronecker_dims
from gdig_core.influence.grad_store import (
    GradientSegmentWriter,
    capture_gradients,
    read_segment,
    rescore_segment,
    store_seeds,
)
from gdig_core.influence.hooks import layer_shape, select_tracked_modules
from gdig_core.influence.scores import read_scores
from gdig_core.influence.seed_preconditioning import precondition_seeds
from gdig_core.influence.variants import score_variants

METHODS = ("ekfac", "kfac", "identity")
VARIANTS = score_variants("ekfac", ["kfac-token", "identity-raw", "identity-cosine", "ekfac-cosine"])


def _setup(dim: int, dtype: str = "float32"):  # noqa: ANN202
    model = micro_lm("llama", vocab=40, hidden=12, intermediate=20, max_positions=16)
    seeds, cands = _examples(3, 1, "s"), _examples(9, 2, "c")
    cfg = CurvatureConfig(method="ekfac")
    sc = ScoringConfig(feature_dim=8, store=GradientStoreConfig(enabled=True, dim_per_layer=dim, dtype=dtype))
    tracked = select_tracked_modules(model, cfg)
    projection = gradient_projection({n: layer_shape(m) for n, m in tracked.items()}, sc.store)
    return model, seeds, cands, cfg, sc, tracked, projection


def _factor_sets(model, seeds, cands, cfg, tracked, projection):  # noqa: ANN001, ANN202
    """Exact and projected factors of every method, from one covariance and one Lambda pass."""
    cov = covariance_stats(model, _batches(seeds + cands, 4), tracked, cfg, projection=projection)
    eigen = eigendecompose(cov, cfg)
    lam = lambda_stats(model, _batches(seeds + cands, 4), tracked, eigen, cfg, projection=projection)
    modules = list(tracked)
    exact = {m: finalize_factors(cfg, modules, eigen, lam, method=m) for m in METHODS}
    projected = {m: finalize_projected_factors(cfg, modules, projection, eigen, lam, method=m) for m in METHODS}
    return exact, projected


def _store_scores(tmp_path, model, seeds, cands, cfg, sc, tracked, projection, projected):  # noqa: ANN001, ANN202
    """Fill a store segment without seeds, then score it against projected seeds."""
    capture_gradients(model, _batches(cands, 4), tracked, sc, tmp_path / "grads.parquet")
    segment = read_segment(tmp_path / "grads.parquet")
    pre = precondition_seeds(model, _batches(seeds, 2), projected, cfg, sc, projection=projection)
    rescore_segment(segment, np.arange(len(segment.ids)), store_seeds(pre, sc.loss_normalisation, VARIANTS), sc,
                    tmp_path / "store.parquet")
    return read_scores(tmp_path / "store.parquet"), segment


def test_store_path_equals_exact_path_when_the_projection_is_the_identity(tmp_path):
    model, seeds, cands, cfg, sc, tracked, projection = _setup(dim=10_000)
    assert projection.is_identity  # every layer (20 x 12) fits in 10,000 dimensions
    exact_f, projected_f = _factor_sets(model, seeds, cands, cfg, tracked, projection)
    pre = precondition_seeds(model, _batches(seeds, 2), exact_f, cfg, sc)
    # The exact pass fills a segment too (what the pipeline's scoring shards do).
    with GradientSegmentWriter(tmp_path / "side.parquet", projection, sc.feature_dim) as sink:
        score_shard(model, _batches(cands, 3), pre, None, sc, tmp_path / "exact.parquet", variants=VARIANTS,
                    grad_sink=sink)
    exact = read_scores(tmp_path / "exact.parquet")
    store, segment = _store_scores(tmp_path, model, seeds, cands, cfg, sc, tracked, projection, projected_f)
    side = read_segment(tmp_path / "side.parquet")
    assert list(store.ids) == list(exact.ids) == [c[0] for c in cands] and store.seed_ids == exact.seed_ids
    np.testing.assert_allclose(side.grads, segment.grads, rtol=1e-5, atol=1e-6 * np.abs(segment.grads).max())
    scale = np.abs(exact.benefit).max()
    np.testing.assert_allclose(store.benefit, exact.benefit, rtol=1e-4, atol=1e-6 * scale)
    for v in VARIANTS:
        for stat in ("mean", "min"):
            ref = exact.variants[v.name][stat]
            np.testing.assert_allclose(store.variants[v.name][stat], ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
        np.testing.assert_array_equal(store.variants[v.name]["frac_pos"], exact.variants[v.name]["frac_pos"])
    for col in ("loss", "n_tokens", "grad_norm", "features"):
        np.testing.assert_allclose(getattr(store, col), getattr(exact, col), rtol=1e-5)


def test_projected_factors_of_an_identity_projection_are_the_exact_ones():
    model, seeds, cands, cfg, sc, tracked, projection = _setup(dim=10_000)
    exact, projected = _factor_sets(model, seeds, cands, cfg, tracked, projection)
    for name in tracked:
        torch.testing.assert_close(projected["ekfac"].inv_lambda[name], exact["ekfac"].inv_lambda[name])
        torch.testing.assert_close(projected["kfac"].q_a[name], exact["kfac"].q_a[name])
    # Fitting in the projected space changes nothing of the exact statistics.
    plain = covariance_stats(model, _batches(seeds + cands, 4), tracked, cfg)
    both = covariance_stats(model, _batches(seeds + cands, 4), tracked, cfg, projection=projection)
    assert all(torch.equal(plain[k], both[k]) for k in plain) and len(both) == 2 * len(plain) - 2


def test_random_projection_scores_are_the_projected_gradients_dot_products(tmp_path):
    """Identity curvature: b'(z, s) = <P_out^T dW_s P_in, P_out^T dW_z P_in>, from autograd."""
    model, seeds, cands, cfg, sc, tracked, projection = _setup(dim=64)
    assert all(projection.shapes[n] == kronecker_dims(*layer_shape(m), 64) == (8, 8) for n, m in tracked.items())
    _, projected_f = _factor_sets(model, seeds, cands, cfg, tracked, projection)
    store, segment = _store_scores(tmp_path, model, seeds, cands, cfg, sc, tracked, projection, projected_f)

    def projected(example) -> torch.Tensor:  # noqa: ANN001
        parts = []
        for name, mod in tracked.items():
            g = _flat_grad(model, example, {name: mod}, "sequence").float().view(*layer_shape(mod))
            p_out = projection.p_out[name] if projection.p_out[name] is not None else torch.eye(g.shape[0])
            p_in = projection.p_in[name] if projection.p_in[name] is not None else torch.eye(g.shape[1])
            parts.append((p_out.T @ g @ p_in).flatten())
        return torch.cat(parts).double()

    gz = torch.stack([projected(ex) for _, ex in cands])
    gs = torch.stack([projected(ex) for _, ex in seeds])
    np.testing.assert_allclose(segment.grads, gz.numpy(), rtol=1e-4, atol=1e-5 * float(gz.abs().max()))
    expected = (gz @ gs.T).numpy()
    got = store.variants["identity-raw"]["mean"]
    np.testing.assert_allclose(got, expected.mean(1), rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_float16_store_keeps_scores_close_and_halves_the_bytes(tmp_path):
    model, seeds, cands, cfg, sc, tracked, projection = _setup(dim=10_000, dtype="float16")
    _, projected_f = _factor_sets(model, seeds, cands, cfg, tracked, projection)
    half, segment = _store_scores(tmp_path / "h", model, seeds, cands, cfg, sc, tracked, projection, projected_f)
    sc32 = sc.model_copy(update={"store": sc.store.model_copy(update={"dtype": "float32"})})
    full, _ = _store_scores(tmp_path / "f", model, seeds, cands, cfg, sc32, tracked, projection, projected_f)
    assert _grad_bytes(tmp_path / "h" / "grads.parquet") < 0.55 * _grad_bytes(tmp_path / "f" / "grads.parquet")
    scale = np.abs(full.benefit).max()
    np.testing.assert_allclose(half.benefit, full.benefit, atol=2e-3 * scale)


def _grad_bytes(path) -> int:  # noqa: ANN001
    """Bytes of the stored gradients (the ``grad`` column), over all row groups."""
    meta = pq.ParquetFile(path).metadata
    col = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.startswith("grad.list"))
    return sum(meta.row_group(g).column(col).total_compressed_size for g in range(meta.num_row_groups))


def test_seeds_and_factors_must_share_the_store_space(tmp_path):
    model, seeds, cands, cfg, sc, tracked, projection = _setup(dim=64)
    exact_f, projected_f = _factor_sets(model, seeds, cands, cfg, tracked, projection)
    with pytest.raises(ValueError, match="fitted in another space"):
        precondition_seeds(model, _batches(seeds, 2), exact_f, cfg, sc, projection=projection)
    # The projection survives a save/load, and exact seeds cannot score a store.
    save_factors(projected_f["ekfac"], tmp_path / "f.safetensors")
    assert load_factors(tmp_path / "f.safetensors").projection == projection.describe()
    exact_seeds = precondition_seeds(model, _batches(seeds, 2), exact_f, cfg, sc)
    capture_gradients(model, _batches(cands, 4), tracked, sc, tmp_path / "grads.parquet")
    segment = read_segment(tmp_path / "grads.parquet")
    with pytest.raises(ValueError, match="another projected space"):
        rescore_segment(segment, np.arange(3), store_seeds(exact_seeds, sc.loss_normalisation, VARIANTS), sc,
                        tmp_path / "x.parquet")
