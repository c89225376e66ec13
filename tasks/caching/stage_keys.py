"""What each stage's cache key covers, derived from the method functions the stage calls.

Each stage names the ``gdig_core`` functions it runs and what it passes them
(:func:`stage_calls`); everything else is derived (``tasks.caching.key_derivation``): the config fields
each function reads through the config objects it receives, and the ``gdig_core`` modules it
imports. Plain values a stage passes (a method name, a budget, a shard size) enter the key as they
are. The tasks call the functions through these same :class:`CoreCall` objects where they can,
so what is hashed is what is passed.

A few settings decide where or how work runs, never what it computes; they are left out of
every key (``RESULT_NEUTRAL``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from gdig_core.config import GdigConfig
from tasks.caching.key_derivation import (
    METHOD_PACKAGE,
    PROJECT_ROOT,
    config_reads,
    imported_modules,
    module_file,
    module_of,
)

#: Config class -> fields that never change a result: where files and caches are, which device
#: (CPU and GPU results differ only by float rounding), scheduling, how often to checkpoint.
RESULT_NEUTRAL: dict[str, set[str] | None] = {
    "OrchestrationConfig": None,  # all of it
    "ModelConfig": {"device", "cache_dir"},
    "DataConfig": {"data_dir"},  # dataset contents are hashed as inputs, wherever they are
    "TrainConfig": {"save_every", "save_every_minutes", "keep_checkpoints"},
}


def _neutral(owner: BaseModel, name: str) -> bool:
    fields = RESULT_NEUTRAL.get(type(owner).__name__, set())
    return fields is None or name in fields


def _dump(value: Any, exclude: Iterable[str] = ()) -> Any:
    """JSON form of a config value without its result-neutral fields."""
    if isinstance(value, BaseModel):
        if type(value).__name__ in RESULT_NEUTRAL and RESULT_NEUTRAL[type(value).__name__] is None:
            return None
        return {k: _dump(getattr(value, k)) for k in type(value).model_fields
                if k not in exclude and not _neutral(value, k)}
    if isinstance(value, Mapping):
        return {str(k): _dump(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return value


def _value_at(obj: Any, path: tuple[str, ...]) -> Any:
    """The JSON value a read of ``path`` under ``obj`` depends on (``_NEUTRAL`` for none)."""
    for i, part in enumerate(path):
        if part == "__all_but__":
            return _dump(obj, exclude=path[i + 1:])
        if not isinstance(obj, BaseModel) or part not in type(obj).model_fields:
            return _dump(obj)  # a method's result or an element: depends on all of ``obj``
        if _neutral(obj, part):
            return _NEUTRAL
        obj = getattr(obj, part)
    return _dump(obj)


_NEUTRAL = object()


@dataclass
class CoreCall:
    """A ``gdig_core`` function with the configuring arguments a stage passes it. Calling it adds
    the per-call arguments (data, paths, models): ``CoreCall(f, cfg=c)(x, out=p) == f(x, out=p, cfg=c)``."""

    fn: Callable
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __init__(self, fn: Callable, **kwargs: Any) -> None:
        if not module_of(fn).startswith(METHOD_PACKAGE + "."):
            raise ValueError(f"{fn.__module__}.{fn.__name__}: stage keys derive from {METHOD_PACKAGE} functions only")
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, *args: Any, **more: Any) -> Any:
        return self.fn(*args, **self.kwargs, **more)

    @property
    def name(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__name__}"

    def key_config(self) -> dict[str, Any]:
        """``{param: value}``: config objects reduced to the fields the function reads."""
        out: dict[str, Any] = {}
        for param, value in sorted(self.kwargs.items()):
            if isinstance(value, BaseModel):
                reads = {".".join(p): _value_at(value, p) for p in sorted(config_reads(self.fn, param))}
                out[param] = {k: v for k, v in reads.items() if v is not _NEUTRAL}
            else:
                out[param] = _dump(value)
        return out

    def modules(self) -> set[str]:
        return set(imported_modules(module_of(self.fn)))


@dataclass
class Setting:
    """A value the stage's task code itself uses (a shard size, a sampling seed), by name."""

    values: dict[str, Any]

    def __init__(self, **values: Any) -> None:
        self.values = values


StageCalls = dict[str, "CoreCall | Setting"]


def key_parts(calls: StageCalls) -> tuple[str, list[str]]:
    """``(config_json, code_files)`` for ``run_stage``."""
    config: dict[str, Any] = {}
    modules: set[str] = set()
    for label, call in sorted(calls.items()):
        if isinstance(call, Setting):
            config[label] = _dump(call.values)
        else:
            config[label] = {"fn": call.name, "args": call.key_config()}
            modules |= call.modules()
    files = sorted(module_file(m).relative_to(PROJECT_ROOT).as_posix() for m in modules)
    return json.dumps(config, sort_keys=True), files


def _model_calls(cfg: GdigConfig) -> StageCalls:
    """How every stage that runs the reference model loads and encodes."""
    from gdig_core.data.encoding import encode_pairs
    from gdig_core.training.models import load_model

    return {"load_model": CoreCall(load_model, cfg=cfg.model), "encode": CoreCall(encode_pairs, cfg=cfg)}


def _scoring_calls(stage: str, cfg: GdigConfig, projection: StageCalls) -> StageCalls:
    """``gradients``: what one row of the gradient store depends on; ``scoring-rows``: what one
    row of the scores depends on (on the chosen path); ``scoring``: the stage, which also fills
    the store when it is enabled."""
    from gdig_core.data import encoding
    from gdig_core.influence import benefit as influence
    from gdig_core.influence import grad_store, hooks, row_store, variants

    score = cfg.scoring
    passes = {"batches": CoreCall(encoding.iter_batches, batch_size=score.batch_size),
              "tracked": CoreCall(hooks.select_tracked_modules, cfg=cfg.curvature)}
    grads = _model_calls(cfg) | passes | projection | {
        "capture": CoreCall(grad_store.capture_gradients, cfg_score=score)}
    if stage == "gradients":
        return grads
    names = Setting(variants=[v.name for v in variants.score_variants(cfg.curvature.method, score.variants)])
    if score.path == "exact":
        rows = _model_calls(cfg) | passes | {"score": CoreCall(influence.score_shard, cfg_score=score), "variants": names}
    else:
        rows = {"seeds": CoreCall(grad_store.store_seeds, loss_normalisation=score.loss_normalisation),
                "rescore": CoreCall(grad_store.rescore_segment, cfg_score=score), "variants": names}
    if stage == "scoring-rows":
        return rows
    calls = rows | {"shards": Setting(shard_size=score.shard_size),
                    # Rows are found by content and written in pool order, under the pool's ids.
                    "content_keys": CoreCall(row_store.content_keys), "assemble": CoreCall(row_store.assemble)}
    if score.store.enabled:
        calls |= {f"store/{label}": call for label, call in grads.items()}
    return calls


def stage_calls(stage: str, cfg: GdigConfig, **params: Any) -> StageCalls:
    """The method calls of ``stage`` with what the stage passes them. ``params``: ``method`` (a
    MethodSpec or the name of one in selection.methods) and ``budget`` for selection, ``seed``
    for finetune."""
    from gdig_core import selection
    from gdig_core.data import encoding, pairs, prepare
    from gdig_core.evaluation import evaluate as evaluation
    from gdig_core.evaluation import weak_mt
    from gdig_core.filters import qe
    from gdig_core.influence import (
        curvature,
        factors,
        features,
        hooks,
        preconditioners,
        seed_preconditioning,
        variants,
    )
    from gdig_core.report import comparisons as report_evidence
    from gdig_core.report import evidence
    from gdig_core.report import writer as report
    from gdig_core.training import finetune as training
    from gdig_core.training import models

    if stage == "data":
        calls: StageCalls = {
            "prepare": CoreCall(prepare.prepare_data, data_cfg=cfg.data, language_names=cfg.prompt.language_names)}
        noise = cfg.data.noise
        if noise is not None and "low_quality_mt" in noise.kinds and noise.weak_mt is not None:
            weak = noise.weak_mt
            calls["weak_mt"] = CoreCall(weak_mt.weak_translator, model_cfg=cfg.model.model_copy(update={"name": weak.model}),
                                        src_lang=cfg.data.src_lang, tgt_lang=cfg.data.tgt_lang,
                                        batch_size=weak.batch_size, max_new_tokens=weak.max_new_tokens)
        return calls
    if stage == "qe":
        return _model_calls(cfg) | {"qe": CoreCall(qe.score_pool, cfg=cfg, batch_size=cfg.qe.batch_size)}
    if stage == "base-model":
        return {"build": CoreCall(models.build_tiny_model, cfg=cfg.model.tiny, seed=0)}
    if stage == "reference":
        train = cfg.reference.train
        return {"sample": CoreCall(pairs.sample_rows, sample=cfg.reference.sample, seed=train.seed),
                "train": CoreCall(training.finetune, cfg=cfg, train_cfg=train)}
    curv = cfg.curvature
    # The preconditioners the score variants need; for the factors, only which statistics passes
    # they take (adding a K-FAC variant to an EK-FAC run reuses the factors).
    methods = variants.curvature_methods(variants.score_variants(curv.method, cfg.scoring.variants))
    store = cfg.scoring.store
    # The gradient store's projection: the curvature stage fits factors in its space as well.
    projection: StageCalls = {"projection": CoreCall(features.gradient_projection, cfg=store)}
    if stage == "curvature":
        passes = list(preconditioners.required_passes(methods))
        return _model_calls(cfg) | {
            "sample": CoreCall(pairs.sample_rows, sample=curv.sample, seed=curv.sampling_seed),
            "shards": Setting(shard_size=curv.shard_size, passes=passes),
            "batches": CoreCall(encoding.iter_batches, batch_size=curv.batch_size),
            "tracked": CoreCall(hooks.select_tracked_modules, cfg=curv),
            "covariance": CoreCall(curvature.covariance_stats, cfg=curv),
            "eigen": CoreCall(curvature.eigendecompose, cfg=curv),
            "lambda": CoreCall(curvature.lambda_stats, cfg=curv),
            "finalize": CoreCall(factors.finalize_factors, cfg=curv),
        } | (projection if store.enabled else {})
    if stage == "precondition":
        return _model_calls(cfg) | {
            "batches": CoreCall(encoding.iter_batches, batch_size=cfg.scoring.batch_size),
            "precondition": CoreCall(seed_preconditioning.precondition_seeds, cfg_curv=curv, cfg_score=cfg.scoring),
            "preconditioners": Setting(methods=methods),
        } | (projection if cfg.scoring.path == "store" else {})
    if stage in ("scoring", "scoring-rows", "gradients"):
        return _scoring_calls(stage, cfg, projection)
    if stage == "selection":
        spec = params["method"]
        if isinstance(spec, str):  # a method's name in selection.methods
            spec = next(m for m in cfg.selection.methods if m.name == spec)
        return {"select": CoreCall(selection.select, cfg=cfg.selection, method=spec, budget=params["budget"],
                                   tgt_lang=cfg.data.tgt_lang)}
    if stage == "finetune":
        train = cfg.finetune.train.model_copy(update={"seed": params["seed"]})
        return {"train": CoreCall(training.finetune, cfg=cfg, train_cfg=train)}
    if stage == "evaluation":
        return {"evaluate": CoreCall(evaluation.evaluate_model, cfg=cfg)}
    if stage == "report":
        import yaml

        # The report prints the whole config and the command that ran it.
        return {"report": CoreCall(report.build_report, title=f"G-DIG report: {cfg.name}",
                                   config_yaml=yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
                                   command=params.get("command")),
                "evidence": CoreCall(evidence.all_scores, src_lang=cfg.data.src_lang, tgt_lang=cfg.data.tgt_lang),
                "significance": CoreCall(report_evidence.significance_rows, tgt_lang=cfg.data.tgt_lang)}
    raise KeyError(f"no stage {stage!r}")


#: Stages and the parameters a key of each needs (for tests and tools that list every key).
STAGES: dict[str, dict[str, Any]] = {
    "data": {}, "base-model": {}, "qe": {}, "reference": {}, "curvature": {}, "precondition": {}, "scoring": {},
    "scoring-rows": {}, "gradients": {},
    "selection": {"method": "gdig", "budget": 100}, "finetune": {"seed": 0}, "evaluation": {}, "report": {},
}
