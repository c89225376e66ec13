"""Adding a selection method and a curvature strategy is one registered unit each
(docs/extending.md): a toy of each is registered here and run through the real code paths."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from micro_models import micro_lm, stack_batches

from gdig_core.config import CurvatureConfig, GdigConfig, MethodSpec, SelectionConfig
from gdig_core.influence import preconditioners
from gdig_core.influence.factors import fit_factor_set
from gdig_core.influence.hooks import select_tracked_modules
from gdig_core.influence.scores import ScoreBatch, ScoreShardWriter, read_scores
from gdig_core.influence.variants import parse_variant
from gdig_core.selection import REGISTRY, MethodInput, Plan, register, select, selection_plan
from gdig_core.selection.plan import ranked_plan

# --------------------------------------------------------------------------- selection method

TARGETS = ["a b c d e", "a", "a b c", "a b", "a b c d", "a b c d e f"]


@pytest.fixture()
def shortest_target():
    """The docs' example: the B pairs with the shortest targets (in words)."""

    @register("shortest_target")
    def _shortest(inp: MethodInput) -> Plan:
        words = np.array([len(t.split()) for t in inp.ctx.tgt], dtype=np.float64)
        return ranked_plan(-words, inp.q, inp.budget, inp.tie, "shortest target")

    yield "shortest_target"
    REGISTRY.pop("shortest_target")


def _scores_and_pool(tmp_path):
    ids = [f"c{i}" for i in range(len(TARGETS))]
    pool = pa.table({"id": ids, "src_lang": ["de"] * 6, "tgt_lang": ["en"] * 6, "src": ["x"] * 6, "tgt": TARGETS})
    benefit = np.ones((6, 2), dtype=np.float32)
    batch = ScoreBatch(ids=ids, ok=np.ones(6, bool), bad_reason=[None] * 6, loss=np.ones(6), n_tokens=np.full(6, 4),
                       benefit=benefit, features=np.eye(6, 3, dtype=np.float32), grad_norm=np.ones(6))
    with ScoreShardWriter(tmp_path / "s.parquet", ["s0", "s1"], 3) as writer:
        writer.write(batch)
    return read_scores(tmp_path / "s.parquet"), pool


def test_a_registered_selection_method_runs_everywhere(shortest_target, tmp_path) -> None:
    from gdig_core.preflight import preflight_problems

    scores, pool = _scores_and_pool(tmp_path)
    cfg = SelectionConfig(budgets=[2], methods=["gdig", {"name": "short", "method": shortest_target}])
    assert [(s.name, b) for s, b in selection_plan(cfg)] == [("gdig", 2), ("short", 2)]
    result = select(scores, pool, cfg, MethodSpec(name="short", method=shortest_target), 2, tmp_path / "out",
                    plots=False)
    assert result.ids == ["c1", "c3"]  # one word, then two
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "candidates.parquet").to_pylist()}
    assert rows["c1"]["status"] == "selected" and rows["c1"]["reason"].startswith("shortest target: rank 1")
    assert rows["c5"]["reason"] == "shortest target: rank 6 of 6 (score -6), beyond the budget 2"
    # The preflight knows it too, and still rejects a name nobody registered.
    run = GdigConfig().model_copy(update={"selection": cfg})
    assert not [p for p in preflight_problems(run) if "selection.methods" in p]
    unknown = GdigConfig().model_copy(update={"selection": SelectionConfig(methods=[{"name": "x", "method": "nope"}])})
    assert any("unknown selection method 'nope'" in p for p in preflight_problems(unknown))


# --------------------------------------------------------------------------- curvature strategy


@pytest.fixture()
def flat_spectrum():
    """A toy strategy: the K-FAC eigenbasis with every eigenvalue 1, so H^-1 g = g / (1 + damping)
    under absolute damping (the eigenbasis is orthogonal)."""

    @preconditioners.register
    class Flat(preconditioners.Preconditioner):
        name: ClassVar[str] = "flat"
        requires_eigendecomposition: ClassVar[bool] = True

        @classmethod
        def eigenvalues(cls, layer, eigen, lam_stats):
            e_g, e_a = eigen[f"{layer}::eG"], eigen[f"{layer}::eA"]
            return torch.ones(len(e_g), len(e_a), dtype=torch.float64)

    yield "flat"
    preconditioners.REGISTRY.pop("flat")


def _examples(n: int) -> list[tuple[str, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(1, 39, (8,), generator=g)
        labels = ids.clone()
        labels[:2] = -100
        out.append((f"e{i}", {"input_ids": ids, "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels}))
    return out


def test_a_registered_curvature_strategy_runs_everywhere(flat_spectrum) -> None:
    cfg = CurvatureConfig(method=flat_spectrum, damping_mode="absolute", damping_factor=0.5)
    assert parse_variant("flat-cosine").curvature == "flat"
    assert preconditioners.required_passes(["flat"]) == (True, False)  # no Lambda pass
    assert preconditioners.required_passes(["flat", "ekfac"]) == (True, True)
    assert "flat" in preconditioners.available(eigen=True, lam=False)
    model = micro_lm(vocab=40, hidden=12, intermediate=20, max_positions=16)
    tracked = select_tracked_modules(model, cfg)
    passes = []

    def batches():
        passes.append(1)
        return stack_batches(_examples(4), 4)

    factors = fit_factor_set(model, batches, tracked, cfg, ["flat", "kfac"])
    assert len(passes) == 1  # the covariance pass only
    name = next(iter(tracked))
    grad = torch.randn(3, *factors["flat"].inv_lambda[name].shape, dtype=torch.float32)
    torch.testing.assert_close(factors["flat"].precondition(name, grad), grad / 1.5, rtol=1e-4, atol=1e-5)
    assert factors["flat"].q_a[name] is factors["kfac"].q_a[name]  # one eigenbasis, shared
    with pytest.raises(ValueError, match="unknown curvature method"):
        CurvatureConfig(method="nope")
