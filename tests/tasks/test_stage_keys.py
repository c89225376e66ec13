"""Cache keys are derived, not kept by hand: changing any config field recomputes exactly the
stages whose method functions read it, and editing any gdig_core module recomputes exactly the
stages that import it. Keys are computed, nothing is run, so every field and module is tried.

The EXPECTED tables below are this test's independent statement of which stage depends on
what; a new config field or module fails here until it is added to them (on purpose: say
which stages it should invalidate)."""

from __future__ import annotations

import typing
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from gdig_core.config import GdigConfig, PinnedStage
from tasks.caching import stage_cache
from tasks.caching.stage_keys import STAGES, key_parts, stage_calls

_PROMPT = ["prompt.*"]
_MODEL_ALL = ["model.name", "model.dtype", "model.trust_remote_code", "model.add_bos", "model.tiny.*"]
_MODEL_LOAD = ["model.name", "model.dtype", "model.trust_remote_code", "model.add_bos"]
_TRAIN = ["epochs", "max_steps", "learning_rate", "batch_size", "grad_accum", "warmup_ratio", "weight_decay",
          "lr_schedule", "max_grad_norm", "bf16", "gradient_checkpointing", "lora"]

#: stage -> field patterns whose change must change the stage's key (and nothing else may).
EXPECTED: dict[str, list[str]] = {
    "data": ["data.src_lang", "data.tgt_lang", "data.pool.*", "data.seed.*", "data.quarantine_pool", "data.dedup",
             "data.max_chars", "data.max_line_bytes", "data.sample_seed", "data.noise", "prompt.language_names"],
    "base-model": ["model.tiny.*"],
    # Two teacher-forced passes of the pool under the base model's prompt.
    "qe": [*_PROMPT, *_MODEL_LOAD, "qe.batch_size"],
    "reference": [*_PROMPT, *_MODEL_ALL, "reference.sample", "reference.train.seed",
                  *[f"reference.train.{f}" for f in _TRAIN]],
    # The score variants decide which statistics passes the preconditioners they need take;
    # with the gradient store on, the same passes fit the factors of projected gradients too.
    "curvature": [*_PROMPT, *_MODEL_LOAD, "curvature.*", "scoring.variants", "scoring.store.enabled"],
    # precondition_seeds reads scoring.autocast (the hand-kept key had left it out) and the
    # tracked modules; the curvature method and damping reach it through the factors file.
    # curvature.method and scoring.variants decide which preconditioners are applied.
    "precondition": [*_PROMPT, *_MODEL_LOAD, "curvature.modules", "curvature.preset", "curvature.method",
                     "scoring.autocast", "scoring.loss_normalisation", "scoring.seed_rank", "scoring.batch_size",
                     "scoring.variants"],
    # The stage also fills the gradient store when it is enabled.
    "scoring": [*_PROMPT, *_MODEL_LOAD, "curvature.modules", "curvature.preset", "curvature.method",
                "scoring.variants", "scoring.shard_size", "scoring.store.enabled",
                "scoring.batch_size", "scoring.loss_normalisation", "scoring.feature_dim", "scoring.feature_seed",
                "scoring.full_benefit_max_seeds", "scoring.top_k_seeds", "scoring.autocast"],
    # One stored row of scores: what the stage reads, less where work is split (shard_size) and
    # whether the store fills alongside. Not the pool: rows are found by their text.
    "scoring-rows": [*_PROMPT, *_MODEL_LOAD, "curvature.modules", "curvature.preset", "curvature.method",
                     "scoring.variants", "scoring.batch_size", "scoring.loss_normalisation", "scoring.feature_dim",
                     "scoring.feature_seed", "scoring.full_benefit_max_seeds", "scoring.top_k_seeds",
                     "scoring.autocast"],
    # One row of the gradient store: no seeds, factors or score variants.
    "gradients": [*_PROMPT, *_MODEL_LOAD, "curvature.modules", "curvature.preset", "scoring.batch_size",
                  "scoring.loss_normalisation", "scoring.feature_dim", "scoring.feature_seed", "scoring.autocast",
                  "scoring.store.dim_per_layer", "scoring.store.seed", "scoring.store.dtype"],
    # Which methods and budgets are listed does not change what one (method, budget) selects.
    # The target language feeds the text filters (language id, length ratio).
    "selection": ["data.tgt_lang", "selection.quality_rule", "selection.tau", "selection.min_mean", "selection.top_k",
                  "selection.top_k_per_budget", "selection.n_clusters", "selection.cluster_size_hint", "selection.kmeans_algorithm",
                  "selection.kmeans_max_iter", "selection.shortfall", "selection.seed", "selection.qe_keep"],
    # The finetune seed comes from finetune.seeds (the key of seed 0 is computed here).
    "finetune": [*_PROMPT, *_MODEL_ALL, *[f"finetune.train.{f}" for f in _TRAIN]],
    # read_dataset gets the whole data section, so the reader's settings count for test sets too.
    "evaluation": [*_PROMPT, *_MODEL_LOAD, "evaluation.test_sets", "evaluation.max_sentences",
                   "evaluation.batch_size", "evaluation.max_new_tokens", "evaluation.num_beams", "evaluation.bf16",
                   "evaluation.max_new_tokens_ratio", "evaluation.reference_nll", "evaluation.reference_nll_sentences",
                   "evaluation.comet_model", "data.src_lang", "data.tgt_lang", "data.max_chars", "data.max_line_bytes",
                   "data.dedup",
                   "data.quarantine_pool", "data.sample_seed"],
    # The report prints the whole config (and the command), so every field is in its key.
    "report": ["*"],
}
#: Fields in no stage key but the report's: the run's name, locations, devices, scheduling,
#: which stages and models run, checkpoint cadence.
REPORT_ONLY = ["name", "scoring.models", "data.data_dir", "model.device", "model.cache_dir", "reference.enabled", "reference.train.save_every",
            "reference.train.save_every_minutes", "reference.train.keep_checkpoints", "selection.budgets",
            "selection.methods", "finetune.enabled", "finetune.seeds", "finetune.train.seed",
            "finetune.train.save_every", "finetune.train.save_every_minutes", "finetune.train.keep_checkpoints",
            "evaluation.enabled", "evaluation.zero_shot", "orchestration.*",
            # Whether the QE stage runs; its scores are the selections' inputs when it does.
            "qe.enabled",
            # Pins replace stages by their outputs, whose hashes are the next stages' inputs.
            "pin.*"]
#: Fields that cannot change alone (scoring.path 'store' needs the store; pin.reference needs
#: reference.enabled, off by default): tested on their own.
JOINT = ["scoring.path", "pin.reference"]


def _leaves(model: BaseModel, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out += _leaves(value, prefix + (name,))
        else:
            out.append(prefix + (name,))
    return out


#: Fields whose values are names from a fixed set: another valid value, by hand.
_OTHER_VALUE = {"scoring.variants": [["kfac-raw"]], "curvature.method": ["ekfac", "kfac"], "scoring.models": [["reference", "base"]],
                "pin.factors": [{"reference": {"dir": "elsewhere", "hash": "h"}}]}


def _candidates(value: Any, annotation: Any) -> list[Any]:
    """Other values of the field's type, most natural first."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return [a for a in args if a != value]
    if annotation is bool or (value is None and bool in args) or isinstance(value, bool):
        return [not value if value is not None else True]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, float):
        return [value + 0.5, value * 0.5]
    if isinstance(value, str):
        return [value + "x"]
    if isinstance(value, dict):
        return [{**value, "xx": "Xx"}]
    if isinstance(value, list):
        inner = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
        if typing.get_origin(inner) is typing.Literal:
            return [value + [a] for a in typing.get_args(inner) if a not in value] or [value[:-1]]
        if value and isinstance(value[0], BaseModel) and "method" in type(value[0]).model_fields:
            from gdig_core.config import method_spec  # selection.methods: one more method

            return [[*value, method_spec("nll")]]
        if value and isinstance(value[0], BaseModel):
            return [[value[0].model_copy(update={"name": value[0].name + "x"}), *value[1:]]]
        if value and isinstance(value[0], int):
            return [value + [max(value) + 1]]
        return [value + ["x"]]
    if value is None:  # optional field left unset: a default of its type
        out: list[Any] = []
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out.append(arg())
            elif arg in (int, float, str):
                out.append({int: 3, float: 1.5, str: "x"}[arg])
        return out
    raise AssertionError(f"no other value for {value!r} of {annotation}")


def _changed(cfg: GdigConfig, path: tuple[str, ...]) -> GdigConfig:
    raw = cfg.model_dump()
    owner: Any = cfg
    for part in path[:-1]:
        owner = getattr(owner, part)
    annotation = type(owner).model_fields[path[-1]].annotation
    candidates = _OTHER_VALUE.get(".".join(path)) or _candidates(getattr(owner, path[-1]), annotation)
    for candidate in candidates:
        node = raw
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = candidate.model_dump() if isinstance(candidate, BaseModel) else (
            [c.model_dump() if isinstance(c, BaseModel) else c for c in candidate]
            if isinstance(candidate, list) else candidate)
        try:
            return GdigConfig.model_validate(raw)
        except ValidationError:
            continue
    raise AssertionError(f"could not find another valid value for {'.'.join(path)}")


def _keys(cfg: GdigConfig) -> dict[str, str]:
    return {stage: key_parts(stage_calls(stage, cfg, **params))[0] for stage, params in STAGES.items()}


def _expected(field: str) -> set[str]:
    return {stage for stage, patterns in EXPECTED.items() if any(fnmatch(field, p) for p in patterns)}


def test_every_config_field_changes_exactly_the_stages_that_read_it() -> None:
    base = GdigConfig()
    base_keys = _keys(base)
    wrong = []
    for path in _leaves(base):
        field = ".".join(path)
        if field in JOINT:
            continue
        expected = _expected(field)
        if expected == {"report"} and not any(fnmatch(field, p) for p in REPORT_ONLY):
            wrong.append(f"{field}: in neither EXPECTED nor REPORT_ONLY (which stages should it recompute?)")
            continue
        keys = _keys(_changed(base, path))
        changed = {stage for stage in keys if keys[stage] != base_keys[stage]}
        if changed != expected:
            wrong.append(f"{field}: recomputes {sorted(changed)}, expected {sorted(expected)}")
    assert not wrong, "\n".join(wrong)


def test_the_store_path_keys_seeds_and_scores_apart_and_keeps_the_gradient_store() -> None:
    """Switching an enabled store from the exact path to the store path: the seeds are projected
    and rows are scored from the store (new precondition, scoring and row keys); the store's own
    rows, the factors and everything upstream stay."""
    exact = GdigConfig()
    exact.scoring.store.enabled = True
    store = exact.model_copy(deep=True)
    store.scoring.path = "store"
    before, after = _keys(exact), _keys(store)
    assert {s for s in before if before[s] != after[s]} == {"precondition", "scoring", "scoring-rows", "report"}


def test_selection_key_covers_its_method_and_budget_and_finetune_its_seed() -> None:
    cfg = GdigConfig()

    def key(stage: str, **params: Any) -> str:
        return key_parts(stage_calls(stage, cfg, **params))[0]

    assert key("selection", method="gdig", budget=100) != key("selection", method="random", budget=100)
    assert key("selection", method="gdig", budget=100) != key("selection", method="gdig", budget=200)
    assert key("finetune", seed=0) != key("finetune", seed=1)
    # A method's own override changes that method's key only.
    gdig, random = key("selection", method="gdig", budget=100), key("selection", method="random", budget=100)
    cfg.selection.methods = [m.model_copy(update={"tau": 0.5}) if m.name == "gdig" else m for m in cfg.selection.methods]
    assert key("selection", method="gdig", budget=100) != gdig and key("selection", method="random", budget=100) == random


#: gdig_core module -> stages whose code fingerprint must change when it is edited.
_ALL = set(STAGES)
EXPECTED_CODE: dict[str, set[str]] = {
    "io": _ALL,
    # The config package: its __init__ gathers every section's names, so every stage that reads
    # a setting reaches all of it (field declarations are not code: test below).
    **{f"config/{m}": _ALL - {"report"} for m in ("__init__", "base", "data", "training", "influence", "selection",
                                                 "filters", "evaluation", "orchestration", "schema", "prompt",
                                                 "yaml_strict")},
    "write_faults": _ALL,  # io.py names the output a full disk refused with it
    "names": _ALL - {"report"},
    "influence/variants": _ALL - {"report"},  # the config's validators import it
    "integrity": _ALL - {"base-model"},
    # The pair table's files: every stage that reads or hashes pairs.
    "data/pairs": {"data", "reference", "curvature", "finetune", "evaluation"},
    "data/readers": {"data", "evaluation"},
    # The readers' capped line reader and character checks: the same stages as the readers.
    "data/line_reader": {"data", "evaluation"},
    "data/text_checks": {"data", "evaluation"},
    "data/prepare": {"data"},
    "data/noise": {"data"},  # data/prepare.py imports it
    "data/encoding": _ALL - {"data", "base-model", "selection", "report"},
    "training/models": _ALL - {"data", "selection", "report"},
    # The one forward pass of a batch's target loss: training, hooks (scoring), NLL.
    "training/losses": {"reference", "curvature", "precondition", "scoring", "scoring-rows", "gradients", "finetune",
                        "evaluation", "qe"},
    "influence/hooks": {"curvature", "precondition", "scoring", "scoring-rows", "gradients"},
    # The teacher-forced loop of the reference NLL and of both QE directions.
    "training/nll": {"qe", "evaluation"},
    "filters/qe": {"qe"},
    "training/finetune": {"reference", "finetune"},
    "training/checkpointing": {"reference", "finetune"},
    "influence/curvature": {"curvature", "precondition", "scoring", "scoring-rows", "gradients"},
    "influence/factors": {"curvature", "precondition", "scoring", "scoring-rows", "gradients"},
    # Scoring only: the seeds' side is seed_preconditioning.py.
    "influence/benefit": {"scoring", "scoring-rows", "gradients"},
    "influence/seed_preconditioning": {"precondition", "scoring", "scoring-rows", "gradients"},
    # The gradient store's projection: curvature fits projected factors with it.
    "influence/features": {"curvature", "precondition", "scoring", "scoring-rows", "gradients"},
    # Not the precondition stage: seed_preconditioning.py writes no score shards.
    "influence/scores": {"scoring", "scoring-rows", "gradients", "selection", "report"},
    "influence/preconditioners": {"curvature", "precondition", "scoring", "scoring-rows", "gradients"},
    **{f"selection/{m}": {"selection"} for m in ("clustering", "context", "layout", "methods", "outputs", "plan",
                                                 "plots", "quality", "registry", "run")},
    "filters/rules": {"selection", "report"},
    "filters/opusfilter": {"selection", "report"},
    "report/comparisons": {"report"},
    "evaluation/significance": {"report"},
    "data/noise_eval": {"selection", "report"},
    "evaluation/evaluate": {"evaluation"},
    "evaluation/generation": {"evaluation"},
    "evaluation/metrics": {"evaluation", "report"},  # the paired tests use its BLEU tokeniser
    "report/writer": {"report"},
    "report/evidence": {"report"},
    # weak_mt: only the data stage with data.noise.weak_mt set (not in the default config).
    "influence/grad_store": {"gradients"},
    "influence/row_store": {"scoring"},
    "report/explain": set(), "preflight": set(), "evaluation/weak_mt": set(), "__init__": set(),
    # A wing's __init__ is its docstring: importing a module of it hashes nothing else.
    **{f"{w}/__init__": set() for w in ("data", "training", "evaluation", "influence", "filters", "selection",
                                         "report")},
}


def test_editing_each_core_module_changes_exactly_the_stages_that_import_it(monkeypatch) -> None:
    cfg = GdigConfig()
    files = {stage: key_parts(stage_calls(stage, cfg, **params))[1] for stage, params in STAGES.items()}
    real = stage_cache._cached_fingerprint
    base = {stage: stage_cache.code_version(f) for stage, f in files.items()}
    core = stage_cache.PROJECT_ROOT / "gdig_core"
    modules = sorted(str(p.relative_to(core).with_suffix("")) for p in core.rglob("*.py"))
    unknown = [m for m in modules if m not in EXPECTED_CODE]
    assert not unknown, f"gdig_core modules missing from EXPECTED_CODE (which stages run them?): {unknown}"
    wrong = []
    for module in modules:
        edited = stage_cache.PROJECT_ROOT / "gdig_core" / f"{module}.py"
        monkeypatch.setattr(stage_cache, "_cached_fingerprint",
                            lambda p, edited=edited: "edited" if Path(p) == edited else real(p))
        monkeypatch.setattr(stage_cache, "_CODE_HASHES", {})
        changed = {stage for stage, f in files.items() if stage_cache.code_version(f) != base[stage]}
        if changed != EXPECTED_CODE[module]:
            wrong.append(f"gdig_core/{module}.py: recomputes {sorted(changed)}, expected {sorted(EXPECTED_CODE[module])}")
    assert not wrong, "\n".join(wrong)


def test_config_field_declarations_are_not_code(tmp_path: Path, monkeypatch) -> None:
    """Adding a setting to a module of the config package must not recompute every stage: its
    value is in the keys of the stages that read it. A changed method (language names) still counts."""
    from tasks.caching import key_derivation

    config = tmp_path / "gdig_core" / "config" / "training.py"
    config.parent.mkdir(parents=True)
    monkeypatch.setattr(key_derivation, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(key_derivation, "CONFIG_DIR", config.parent)
    source = "class S:\n    a: int = 1\n\n    def name(self):\n        return 'x'\n"
    config.write_text(source)
    before = key_derivation.source_fingerprint(config)
    config.write_text(source.replace("    a: int = 1\n", "    a: int = 1\n    b: str = 'new'\n"))
    assert key_derivation.source_fingerprint(config) == before
    config.write_text(source.replace("'x'", "'y'"))
    assert key_derivation.source_fingerprint(config) != before


def test_core_calls_must_be_method_functions() -> None:
    from tasks.caching.stage_keys import CoreCall
    from tasks.stages.publish import publish_outputs

    with pytest.raises(ValueError, match="gdig_core functions only"):
        CoreCall(publish_outputs)


def test_a_reference_pin_changes_no_stage_key_but_the_reports() -> None:
    """A pin replaces the reference stage by its output; the output's hash, not the pin's
    setting, is what later stages key on."""
    unpinned = GdigConfig()
    unpinned.reference.enabled = True
    pinned = unpinned.model_copy(deep=True)
    pinned.pin.reference = PinnedStage(dir="elsewhere", hash="h")
    before, after = _keys(unpinned), _keys(pinned)
    assert {s for s in before if before[s] != after[s]} <= {"report"}
