"""Our EK-FAC/K-FAC scores equal kronfluence 1.0.1's pairwise scores on a tiny Llama.

Conventions aligned on both sides: loss = summed target-token cross-entropy per example
(kronfluence needs a summed loss), empirical Fisher, the same tracked modules, attention-mask
token counting, eigendecomposition in fp64. Damping: kronfluence adds ``damping_factor`` as an
absolute value, or ``0.1 * mean(Lambda)`` per module when it is None; ours is ``relative``
(factor * mean(Lambda)) or ``absolute``. Both pairings are checked.
"""

from __future__ import annotations

import copy
import gc
import importlib
import importlib.metadata
import logging

import numpy as np
import pytest
import torch
from torch import nn


def _import_kronfluence():
    """Skip only when kronfluence is absent; an installed but broken one is a failure, because
    this test is the correctness anchor. (kronfluence 1.0.1 imports ``einconv``, which its
    --no-deps install does not bring: it has to be in the dev extras.)"""
    try:
        importlib.metadata.version("kronfluence")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("kronfluence is not installed", allow_module_level=True)
    try:
        return importlib.import_module("kronfluence")
    except ImportError as err:
        pytest.fail(f"kronfluence is installed but cannot be imported: {err}", pytrace=False)


kronfluence = _import_kronfluence()
from kronfluence.analyzer import Analyzer  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402
from kronfluence.task import Task  # noqa: E402
from micro_models import micro_lm  # noqa: E402

from gdig_core.config import CurvatureConfig, ScoringConfig  # noqa: E402
from gdig_core.influence.benefit import score_shard  # noqa: E402
from gdig_core.influence.factors import fit_factors  # noqa: E402
from gdig_core.influence.hooks import select_tracked_modules  # noqa: E402
from gdig_core.influence.scores import read_scores  # noqa: E402
from gdig_core.influence.seed_preconditioning import precondition_seeds  # noqa: E402

VOCAB, T = 64, 10


def _model() -> nn.Module:
    return micro_lm(vocab=VOCAB, hidden=16, intermediate=24)


def _examples(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded examples with a masked prompt, each a dict of [T] tensors."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = T - (i % 3)
        prompt = 2 + (i % 3)
        ids = torch.randint(0, VOCAB, (T,), generator=g)
        mask = torch.zeros(T, dtype=torch.long)
        mask[:length] = 1
        labels = ids.clone()
        labels[:prompt] = -100
        labels[length:] = -100
        ids[length:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _batches(examples: list[dict], prefix: str, batch_size: int):
    for s in range(0, len(examples), batch_size):
        chunk = examples[s : s + batch_size]
        batch = {k: torch.stack([e[k] for e in chunk]) for k in chunk[0]}
        yield [f"{prefix}{s + i}" for i in range(len(chunk))], batch


class _SummedLMTask(Task):
    def __init__(self, modules: list[str]) -> None:
        self.modules = modules

    def _loss(self, batch, model) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )

    def compute_train_loss(self, batch, model, sample=False):
        assert not sample  # empirical Fisher only in this test
        return self._loss(batch, model)

    def compute_measurement(self, batch, model):
        return self._loss(batch, model)

    def get_influence_tracked_modules(self):
        return self.modules

    def get_attention_mask(self, batch):
        return batch["attention_mask"]


def _kronfluence_scores(model, modules, fit, seeds, cands, strategy, damping, tmp_path) -> np.ndarray:
    logging.getLogger("kronfluence").setLevel(logging.ERROR)
    task = _SummedLMTask(modules)
    kf_model = kronfluence.prepare_model(copy.deepcopy(model), task)
    analyzer = Analyzer("agree", kf_model, task, cpu=True, disable_tqdm=True, output_dir=str(tmp_path / "kf"))
    fargs = FactorArguments(
        strategy=strategy, use_empirical_fisher=True, eigendecomposition_dtype=torch.float64
    )
    analyzer.fit_all_factors("f", fit, per_device_batch_size=4, factor_args=fargs, overwrite_output_dir=True)
    analyzer.compute_pairwise_scores(
        "s",
        "f",
        query_dataset=seeds,
        train_dataset=cands,
        per_device_query_batch_size=len(seeds),
        per_device_train_batch_size=4,
        score_args=ScoreArguments(damping_factor=damping),
        overwrite_output_dir=True,
    )
    return analyzer.load_pairwise_scores("s")["all_modules"].numpy()  # [n_seeds, n_candidates]


def _our_scores(model, fit, seeds, cands, cfg, tmp_path) -> np.ndarray:
    tracked = select_tracked_modules(model, cfg)
    factors = fit_factors(model, lambda: _batches(fit, "f", 4), tracked, cfg)
    sc = ScoringConfig(loss_normalisation="sequence", feature_dim=8, batch_size=4)
    precond = precondition_seeds(model, _batches(seeds, "s", 3), factors, cfg, sc)
    score_shard(model, _batches(cands, "c", 4), precond, factors, sc, tmp_path / "ours.parquet")
    table = read_scores(tmp_path / "ours.parquet")
    assert table.ok.all()
    return table.benefit.T.astype(np.float64)  # [n_seeds, n_candidates]


@pytest.mark.parametrize(
    ("strategy", "kf_damping", "ours"),
    [
        ("ekfac", None, {"damping_mode": "relative", "damping_factor": 0.1}),
        ("ekfac", 1e-3, {"damping_mode": "absolute", "damping_factor": 1e-3}),
        ("kfac", None, {"damping_mode": "relative", "damping_factor": 0.1}),
    ],
)
def test_pairwise_scores_match_kronfluence(tmp_path, monkeypatch, strategy, kf_damping, ours):
    # kronfluence calls gc.collect() around every stage (seconds on a loaded CPU); numerics unchanged.
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    model = _model()
    fit, seeds, cands = _examples(12, 1), _examples(3, 2), _examples(8, 3)
    cfg = CurvatureConfig(method=strategy, fisher="empirical", **ours)
    modules = list(select_tracked_modules(model, cfg))
    assert len(modules) == 6
    theirs = _kronfluence_scores(model, modules, fit, seeds, cands, strategy, kf_damping, tmp_path)
    mine = _our_scores(model, fit, seeds, cands, cfg, tmp_path)
    assert np.abs(theirs).max() > 0
    rel = np.abs(mine - theirs).max() / np.abs(theirs).max()
    print(f"{strategy} damping={kf_damping}: max relative error {rel:.2e}")
    assert rel < 1e-3, f"max relative error {rel:.2e}"
    # Sign: kronfluence's pairwise score is positive when training on the candidate helps the
    # query, as is our benefit; they agree exactly, not only up to sign.
    np.testing.assert_allclose(mine, theirs, rtol=1e-3, atol=1e-3 * np.abs(theirs).max())
