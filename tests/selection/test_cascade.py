"""Cascades (pre-filters, then the influence ranking, then k-means) and their ablation: the
pre-filters run before the quality set is ranked, a QE cut keeps its share of what the rules let
through, and an ablation is a set of ordinary methods that round-trips through the config."""

from __future__ import annotations

import numpy as np
import pytest
from selection_fixtures import write_run

from gdig_core.config import GdigConfig, MethodSpec, SelectionConfig, ablation_specs
from gdig_core.selection import plan_selection
from gdig_core.selection.context import PairContext

N = 10


def _setting(tmp_path):  # noqa: ANN001, ANN202
    rng = np.random.default_rng(0)
    benefit = np.tile(np.arange(N, 0, -1, dtype=float)[:, None], (1, 3))  # c0 best ... c9 worst
    scores, pool = write_run(tmp_path, benefit, rng.normal(size=(N, 4)))
    src = [f"Das ist Satz Nummer {i}." for i in range(N)]
    tgt = [f"This is sentence number {i}." for i in range(N)]
    tgt[0] = src[0]  # the best-benefit candidate is a copy
    qe = np.linspace(0.0, -9.0, N)  # QE prefers low ids too
    qe[1] = -100.0  # ... except c1
    ctx = PairContext(src=src, tgt=tgt, src_lang="de", tgt_lang="en", qe=qe)
    return scores, ctx


def test_prefilters_run_before_the_quality_set_is_ranked(tmp_path) -> None:
    scores, ctx = _setting(tmp_path)
    cfg = SelectionConfig(quality_rule="topk", top_k=4)
    spec = MethodSpec(name="cascade", method="quality", prefilter=["copy", "qe"], qe_keep=0.5)
    plan, q = plan_selection(scores, cfg, spec, 4, ctx)
    # copy drops c0; the QE cut keeps the best half of the 9 left (5: c2..c6, c1 has the worst QE);
    # the top 4 by benefit among them form the quality set.
    assert q.excluded == {"prefilter_copy": 1, "prefilter_qe": 4}
    assert sorted(scores.ids[q.order].tolist()) == ["c0002", "c0003", "c0004", "c0005"]
    assert "after pre-filters copy+qe" in q.rule
    assert q.exclusion[0] == "rejected by the copy pre-filter" and q.exclusion[1] == "rejected by the qe pre-filter"
    assert sorted(scores.ids[plan.picked].tolist()) == ["c0002", "c0003", "c0004", "c0005"]
    # The cascade's score ranks what the QE cut rejected below what it kept, and the copy lowest.
    kept = q.prefilter_stage == 0
    assert plan.score[~kept].max() < plan.score[kept].min() and plan.score[0] < plan.score[1]


def test_qe_method_ranks_by_the_qe_score(tmp_path) -> None:
    scores, ctx = _setting(tmp_path)
    plan, _ = plan_selection(scores, SelectionConfig(), "qe", 3, ctx)
    assert scores.ids[plan.picked].tolist() == ["c0000", "c0002", "c0003"]


def test_ablation_expands_into_ordinary_methods_and_round_trips() -> None:
    cascade = MethodSpec(name="cascade", method="gdig", prefilter=["opusfilter", "qe"], ablation=True,
                         variant="identity-raw", finetune_seeds=[0, 1, 2])
    variants = {s.name: s for s in ablation_specs(cascade)}
    assert list(variants) == ["cascade.no-opusfilter", "cascade.no-qe", "cascade.no-influence", "cascade.no-kmeans",
                              "cascade.filter-random", "cascade.filter-qe"]
    assert variants["cascade.no-qe"].prefilter == ["opusfilter"] and variants["cascade.no-qe"].method == "gdig"
    assert variants["cascade.no-influence"].method == "diversity"
    assert variants["cascade.no-kmeans"].method == "quality"
    assert variants["cascade.filter-random"].prefilter == ["opusfilter", "qe"]
    assert all(v.variant == "identity-raw" and v.finetune_seeds == [0, 1, 2] and not v.ablation
               for v in variants.values())
    cfg = GdigConfig(selection=SelectionConfig(methods=[cascade, MethodSpec(name="random", method="random")]))
    names = [m.name for m in cfg.selection.methods]
    assert names == ["cascade", *variants, "random"]
    again = GdigConfig.model_validate(cfg.model_dump(mode="json"))
    assert [m.name for m in again.selection.methods] == names and again == cfg
    assert cfg.qe_on  # the cascade's QE cut needs the QE stage


def test_ablation_needs_a_gdig_cascade() -> None:
    with pytest.raises(ValueError, match="needs pre-filters"):
        ablation_specs(MethodSpec(name="g", method="gdig", ablation=True))
    with pytest.raises(ValueError, match="gdig cascade"):
        ablation_specs(MethodSpec(name="r", method="random", prefilter=["copy"], ablation=True))


def test_qe_methods_refused_when_qe_is_off() -> None:
    with pytest.raises(ValueError, match="qe.enabled is false"):
        GdigConfig.model_validate({"qe": {"enabled": False}, "selection": {"methods": ["qe"]}})
