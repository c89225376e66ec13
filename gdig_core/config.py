"""Pydantic models for every pipeline stage, loaded from YAML with ``--set a.b=c`` overrides.

Each stage has its own section so that cache keys can hash exactly the settings a stage depends on.
Unknown keys are errors (``extra="forbid"``): a typo must not silently fall back to a default.
Types are strict: ``true`` is not a batch size and ``2.5`` is not a step count. Names that become
directory names are checked (``gdig_core.names``), and so is the prompt template.

Length: one tree of pydantic models, one section per stage, each field with the comment that
documents it; users read it top to bottom as the reference of every setting, and
``tasks.key_derivation`` fingerprints this module without its field declarations (a new setting
does not change every stage's code version), which a split over several modules would have to
repeat for each.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gdig_core.names import SafeName
from gdig_core.prompt_fields import check_template

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "mt"

#: Language codes the prompt knows a name for; others need an entry in ``prompt.language_names``.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "de": "German",
    "zh": "Chinese",
    "cs": "Czech",
    "ru": "Russian",
    "is": "Icelandic",
    "ja": "Japanese",
    "fr": "French",
    "es": "Spanish",
    "uk": "Ukrainian",
    "ha": "Hausa",
}

#: The prompt of the official G-DIG code; ``{tgt_lang_name}`` and ``{src}`` are filled in.
GDIG_PROMPT = 'Translate the following text into {tgt_lang_name}\n\nText:\n"{src}"\n\n'


class ConfigError(ValueError):
    """A configuration problem, with the key path that caused it."""


class Section(BaseModel):
    # strict: YAML's `true` would otherwise be taken as the integer 1, and 2.5 cut to 2.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class DatasetSpec(Section):
    """One dataset on disk: a single file, or two line-aligned text files (``path`` + ``tgt_path``)."""

    path: str
    format: Literal["auto", "jsonl", "tsv", "parallel", "parquet", "hf"] = "auto"
    tgt_path: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    #: Take at most this many rows (deterministic: the first after a seeded shuffle).
    sample: int | None = Field(default=None, gt=0)
    #: Keep only pairs whose source and target are both at most this many characters, before
    #: sampling (a size filter for experiments; the rows left out are counted, not quarantined).
    max_chars: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _parallel_needs_target(self) -> DatasetSpec:
        if self.format == "parallel" and not self.tgt_path:
            raise ValueError("format 'parallel' needs tgt_path (the line-aligned target file)")
        return self


class WeakMTConfig(Section):
    """The weak system whose translations become ``low_quality_mt`` noise (few-shot, greedy)."""

    model: str = "gemma-3-270m"
    batch_size: int = Field(default=16, gt=0)
    max_new_tokens: int = Field(default=96, gt=0)


class NoiseConfig(Section):
    """Labelled noise injected into the pool after sampling (experiments: see gdig_core.noise).

    The labels go to ``noise_labels.parquet``; reports then show each method's clean share and
    each score's ROC AUC per noise kind.
    """

    fraction: float = Field(default=0.3, ge=0, le=1)
    kinds: list[str] = Field(
        default_factory=lambda: ["misaligned", "source_copy", "truncated", "wrong_language", "partial_translation"]
    )
    seed: int = 0
    #: Text file (one sentence a line) or dataset whose sources are the third-language targets of
    #: ``wrong_language``; None: the source language only.
    third_language: DatasetSpec | None = None
    #: Needed when ``kinds`` holds ``low_quality_mt``.
    weak_mt: WeakMTConfig | None = None

    @model_validator(mode="after")
    def _weak_mt_when_needed(self) -> NoiseConfig:
        if "low_quality_mt" in self.kinds and self.weak_mt is None:
            raise ValueError("noise kind 'low_quality_mt' needs data.noise.weak_mt (the weak system)")
        if not self.kinds:
            raise ValueError("data.noise.kinds is empty")
        return self


class DataConfig(Section):
    #: Directory that relative dataset paths are resolved against.
    data_dir: str = str(DEFAULT_DATA_DIR)
    src_lang: str = "de"
    tgt_lang: str = "en"
    pool: DatasetSpec = DatasetSpec(path="de-en/pool.wmt17-20.jsonl")
    seed: DatasetSpec = DatasetSpec(path="de-en/flores.dev.tsv", sample=200)
    #: Bad pool rows go to a quarantine file and are counted (seed and test sets always fail hard).
    quarantine_pool: bool = True
    dedup: bool = True
    #: Longest allowed source or target, in characters.
    max_chars: int = Field(default=1000, gt=0)
    sample_seed: int = 0
    #: Inject labelled noise into the (sampled) pool: for measuring what selection removes.
    noise: NoiseConfig | None = None


class PromptConfig(Section):
    template: str = GDIG_PROMPT
    language_names: dict[str, str] = Field(default_factory=dict)
    max_length: int = Field(default=256, gt=8)
    #: Which side of an over-long prompt is cut; the target is never cut before the prompt is.
    truncation_side: Literal["left", "right"] = "left"

    @field_validator("template")
    @classmethod
    def _template_fields_known(cls, value: str) -> str:
        return check_template(value)


class TinyModelConfig(Section):
    architecture: Literal["llama", "gemma3", "qwen2"] = "llama"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    vocab_size: int = 1000
    #: Texts of the pool used to train the BPE tokenizer.
    tokenizer_texts: int = 4000


class ModelConfig(Section):
    #: "tiny" (built from ``tiny``), "gemma-3-270m" (offline GGUF package), a hub id or a local dir.
    name: str = "tiny"
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    cache_dir: str | None = None
    #: Prepend the BOS token to every example (Gemma needs it, whatever its tokenizer does).
    add_bos: bool = True


class LoraConfig(Section):
    r: int = Field(default=16, gt=0)
    alpha: int = 32
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)


class TrainConfig(Section):
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    learning_rate: float = Field(default=2e-5, gt=0)
    batch_size: int = Field(default=8, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    #: bf16 autocast; None = on when CUDA with bf16 support is used (CPU always trains in fp32).
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None
    seed: int = 0
    #: Checkpoint every N optimizer steps (None: at the end of every epoch), for resuming.
    save_every: int | None = Field(default=None, gt=0)
    #: Also checkpoint when this many minutes passed since the last one (long epochs); None: off.
    save_every_minutes: float | None = Field(default=30.0, gt=0)
    #: How many of the latest resume checkpoints to keep while training (deleted after success);
    #: with two, a checkpoint corrupted on disk still leaves the one before it to resume from.
    keep_checkpoints: int = Field(default=2, gt=0)


class ReferenceConfig(Section):
    """Step 1: finetune the base model on (a sample of) the pool to get the reference model."""

    #: Off by default: on Gemma-3-270M (reports/evidence-*), scores at the pool-finetuned model
    #: separated clean from noisy pairs worse than at the base model. The paper's recipe turns it on.
    enabled: bool = False
    sample: int | None = Field(default=None, gt=0)
    train: TrainConfig = TrainConfig()


class CurvatureConfig(Section):
    #: identity (plain gradient similarity) by default: on Gemma-3-270M it ranked clean pairs above
    #: noisy ones better than EK-FAC and K-FAC (reports/evidence-*) and needs no curvature passes.
    #: ekfac is the paper's (and kronfluence's) choice.
    #: A strategy of gdig_core.preconditioners: ekfac, kfac, identity (or one a project registers).
    method: str = "identity"
    fisher: Literal["true", "empirical"] = "empirical"
    #: Module name patterns (fnmatch) of the tracked nn.Linear layers, or a preset.
    modules: list[str] = Field(default_factory=lambda: ["*mlp.gate_proj", "*mlp.up_proj", "*mlp.down_proj"], min_length=1)
    preset: Literal["mlp", "gdig-official", "custom"] = "mlp"
    sample: int | None = Field(default=None, gt=0)
    shard_size: int = Field(default=512, gt=0)
    batch_size: int = Field(default=8, gt=0)
    #: Damping = damping_factor * mean eigenvalue (relative) or damping_factor itself (absolute).
    damping_factor: float = Field(default=0.1, ge=0)
    damping_mode: Literal["relative", "absolute"] = "relative"
    eig_dtype: Literal["float64", "float32"] = "float64"
    sampling_seed: int = 0
    #: Mixed precision for the statistics passes ("bfloat16" on GPUs); statistics sums stay fp32.
    autocast: Literal["none", "bfloat16", "float16"] = "none"

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        # Looked up, not imported: checking a name computes nothing, so the strategies' code
        # enters the cache keys of the stages that run it (tasks.key_derivation follows imports),
        # not those of every stage that loads a config.
        importlib.import_module("gdig_core.preconditioners").get(value)
        return value


class GradientStoreConfig(Section):
    """Projected candidate gradients kept on disk, so a new seed set is scored without a pass over
    the pool (see gdig_core.grad_store). Curvature for that path is fitted on the projected
    gradients (LoGra's approach), in the same passes as the exact factors."""

    enabled: bool = False
    #: Dimensions kept per tracked layer: a Kronecker projection ``k_out x k_in`` of its gradient
    #: (``k_out * k_in <= dim_per_layer``); a layer with at most this many weights is kept exactly.
    dim_per_layer: int = Field(default=4096, gt=0)
    seed: int = 0
    #: float16 halves the store; each row is scaled by its largest magnitude first, so nothing overflows.
    dtype: Literal["float32", "float16"] = "float32"


class ScoringConfig(Section):
    shard_size: int = Field(default=256, gt=0)
    batch_size: int = Field(default=8, gt=0)
    #: Compress each preconditioned seed gradient to this rank (None: exact).
    seed_rank: int | None = Field(default=None, gt=0)
    loss_normalisation: Literal["token", "sequence"] = "sequence"
    feature_dim: int = Field(default=256, gt=0)
    feature_seed: int = 0
    #: Store the full benefit vector when the seed set is at most this large, else only summaries.
    full_benefit_max_seeds: int = Field(default=1024, gt=0)
    top_k_seeds: int = Field(default=5, gt=0)
    #: Mixed precision for scoring ("bfloat16" on GPUs): forward/backward and the score products run
    #: in it, with fp32 accumulation of the benefit; preconditioning itself stays fp32.
    autocast: Literal["none", "bfloat16", "float16"] = "none"
    #: Extra score variants computed in the same pass, ``<curvature>-<normalisation>`` (see
    #: gdig_core.variants): curvature ekfac/kfac/identity, normalisation raw/token/cosine. The
    #: primary variant ``<curvature.method>-raw`` always fills the main benefit columns.
    variants: list[str] = Field(default_factory=list)
    #: The models the pool is scored at: ``reference`` (the pool-finetuned model of step 1; the
    #: base model itself when reference.enabled is false) and/or ``base``. Selection methods name
    #: the one they use (default: the first).
    models: list[Literal["reference", "base"]] = Field(default_factory=lambda: ["reference"])
    #: ``exact`` (default): every new candidate gets a forward and backward pass against the
    #: preconditioned seeds. ``store``: benefits come from the projected gradient store (``store``
    #: must be enabled): a new seed set then costs the seeds' passes and one matrix product.
    path: Literal["exact", "store"] = "exact"
    store: GradientStoreConfig = GradientStoreConfig()

    @model_validator(mode="after")
    def _store_path_needs_store(self) -> ScoringConfig:
        if self.path == "store" and not self.store.enabled:
            raise ValueError("scoring.path 'store' reads the projected gradient store: set scoring.store.enabled: true")
        if self.path == "store" and self.seed_rank is not None:
            raise ValueError("scoring.seed_rank compresses exact seed gradients; the store path's seeds are "
                             "projected already: leave seed_rank unset with scoring.path 'store'")
        return self

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, value: list[str]) -> list[str]:
        from gdig_core.variants import parse_variant

        for name in value:
            parse_variant(name)
        return value

    @field_validator("models")
    @classmethod
    def _models_listed_once(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("scoring.models must list 'reference' and/or 'base', each once")
        return value


class MethodSpec(Section):
    """One selection method as the pipeline runs it: a built-in kind with optional overrides.

    A plain string in ``selection.methods`` is ``{name: s, method: s}``. ``name`` labels the
    selection (directories, report rows) and must be a safe file name.
    """

    name: SafeName
    #: A method registered in gdig_core.selection.registry (gdig, quality, diversity, random,
    #: full, nll, length_ratio, copy, language_id, cheap, oracle, or one a project adds); checked
    #: by the preflight and by the selection itself, so that this module stays free of them.
    method: SafeName
    #: Score variant for the influence methods (gdig, quality); None: the primary variant.
    variant: str | None = None
    #: Scoring model for influence and NLL methods; None: the first of scoring.models.
    model: Literal["reference", "base"] | None = None
    #: Overrides of the selection section for this method only.
    quality_rule: Literal["fraction", "topk", "min_mean"] | None = None
    tau: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, gt=0)
    min_mean: float | None = None
    shortfall: Literal["take_all", "top_up"] | None = None
    seed: int | None = None
    #: Pre-filters applied in order before the method: candidates they reject are not eligible, and
    #: a ``topk`` quality set is the top k of what they keep (a cascade). ``copy``, ``language_id``,
    #: ``length_ratio``, ``cheap`` (the three rules of the cheap filter), ``opusfilter`` (its
    #: standard chain) or ``qe`` (keep the best ``qe_keep`` share by the QE score).
    prefilter: list[Literal["copy", "language_id", "length_ratio", "cheap", "opusfilter", "qe"]] = Field(
        default_factory=list)
    #: Override of selection.qe_keep for this method.
    qe_keep: float | None = Field(default=None, gt=0, le=1)
    #: Also run the cascade's ablation: this method with each pre-filter removed in turn, without
    #: the influence ranking (pre-filters then k-means), without k-means (pre-filters then the top B
    #: by influence), and the controls pre-filters then random and pre-filters then the QE ranking.
    #: Each is a method of its own, named ``<name>.<what changed>`` (see ablation_specs).
    ablation: bool = False
    #: Set on the methods an ablation generated: the cascade's name (they are made again from it
    #: whenever the config is validated, so a dumped and reloaded config is the same).
    ablation_of: str | None = None
    #: Finetuning seeds for this selection; None: finetune.seeds.
    finetune_seeds: list[int] | None = None

    @field_validator("prefilter")
    @classmethod
    def _prefilters_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"prefilter lists a filter twice: {value}")
        return value

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str | None) -> str | None:
        if value is not None:
            from gdig_core.variants import parse_variant

            parse_variant(value)
        return value

    @field_validator("finetune_seeds")
    @classmethod
    def _some_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and not value:
            raise ValueError("finetune_seeds must not be empty (leave it out to use finetune.seeds)")
        return value


#: What a cascade's ablation varies, by suffix: the parts removed and the controls.
ABLATION_SUFFIXES = ("no-influence", "no-kmeans", "filter-random", "filter-qe")


def ablation_specs(spec: MethodSpec) -> list[MethodSpec]:
    """The ablation of a cascade (``spec``: pre-filters, then gdig's influence ranking and k-means):
    one method per pre-filter removed (``<name>.no-<filter>``), the pre-filters followed by k-means
    alone (``.no-influence``: diversity), by the top B by influence alone (``.no-kmeans``: quality),
    and the controls that replace the influence ranking by a random pick (``.filter-random``) or by
    the QE ranking (``.filter-qe``). Every variant keeps the cascade's other settings."""
    if spec.method != "gdig":
        raise ValueError(f"selection method {spec.name!r}: ablation is defined for a gdig cascade, not {spec.method!r}")
    if not spec.prefilter:
        raise ValueError(f"selection method {spec.name!r}: ablation needs pre-filters (the cascade's first part)")
    base = spec.model_dump() | {"ablation": False, "ablation_of": spec.name}
    out = [MethodSpec.model_validate(base | {"name": f"{spec.name}.no-{f}", "prefilter": [p for p in spec.prefilter if p != f]})
           for f in spec.prefilter]
    for suffix, method in zip(ABLATION_SUFFIXES, ("diversity", "quality", "random", "qe"), strict=True):
        out.append(MethodSpec.model_validate(base | {"name": f"{spec.name}.{suffix}", "method": method}))
    return out


def method_spec(item: str | MethodSpec | dict) -> MethodSpec:
    """A ``selection.methods`` entry as a MethodSpec."""
    if isinstance(item, MethodSpec):
        return item
    if isinstance(item, str):
        return MethodSpec(name=item, method=item)  # type: ignore[arg-type]
    return MethodSpec.model_validate(item)


class SelectionConfig(Section):
    budgets: list[int] = Field(default_factory=lambda: [100])
    #: Method names (built-in kinds) or specs ``{name, method, variant, model, tau, ...}``
    #: (see MethodSpec); names must be unique.
    methods: list[MethodSpec] = Field(
        default_factory=lambda: [method_spec(m) for m in ("gdig", "quality", "diversity", "random", "full")]
    )
    #: fraction: benefit_frac_pos >= tau (the paper); topk: the top_k by mean benefit;
    #: min_mean: benefit_mean >= min_mean. Every rule ranks the quality set by mean benefit.
    #: topk by default: the paper's fraction rule with tau=1 kept 7 of 1,000 Gemma-3-270M candidates,
    #: leaving the selection to the top-up (reports/evidence-*); ranking by mean benefit kept the most
    #: clean pairs.
    quality_rule: Literal["fraction", "topk", "min_mean"] = "topk"
    tau: float = Field(default=1.0, ge=0, le=1)
    min_mean: float = 0.0
    #: Size of the quality set under quality_rule=topk; None ties it to the budget
    #: (top_k_per_budget x budget), so one setting serves several budgets.
    top_k: int | None = Field(default=None, gt=0)
    top_k_per_budget: float = Field(default=2.0, gt=0)
    #: k-means K; None ties it to the budget (budget // cluster_size_hint, at least 2).
    n_clusters: int | None = Field(default=None, gt=0)
    cluster_size_hint: int = Field(default=10, gt=0)
    #: auto: Lloyd k-means fitted on at most 256 points per cluster (a seeded subsample at pool
    #: scale), then every point assigned to its nearest centre; lloyd: on every point;
    #: minibatch: sklearn MiniBatchKMeans.
    kmeans_algorithm: Literal["auto", "lloyd", "minibatch"] = "auto"
    kmeans_max_iter: int = Field(default=30, gt=0)
    #: Budget larger than the quality set: take_all (select the whole quality set, say so) or
    #: top_up (fill from the next-best eligible candidates by mean benefit, each marked top_up).
    shortfall: Literal["take_all", "top_up"] = "top_up"
    seed: int = 0
    #: The ``qe`` pre-filter keeps this share of the candidates that reach it, best QE score first.
    qe_keep: float = Field(default=0.5, gt=0, le=1)

    @field_validator("methods", mode="before")
    @classmethod
    def _specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v, "method": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("methods")
    @classmethod
    def _unique_names(cls, value: list[MethodSpec]) -> list[MethodSpec]:
        if not value:
            raise ValueError("selection.methods is empty")
        value = [m for spec in value if spec.ablation_of is None
                 for m in ([spec, *ablation_specs(spec)] if spec.ablation else [spec])]
        names = [m.name for m in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"selection method names must be unique: {dup}")
        return value

    @field_validator("budgets")
    @classmethod
    def _positive_budgets(cls, value: list[int]) -> list[int]:
        if not value or any(b <= 0 for b in value):
            raise ValueError("budgets must be a non-empty list of positive integers")
        return value


class QEConfig(Section):
    """Quality estimation from the base model itself: dual conditional cross-entropy (gdig_core.qe),
    two forward passes per pool pair, no backward."""

    #: None: computed when a selection method or pre-filter uses it; true: always (the evidence
    #: tables then show its ROC AUC per noise kind); false: never (a method needing it is refused).
    enabled: bool | None = None
    batch_size: int = Field(default=16, gt=0)


def uses_qe(selection: SelectionConfig) -> list[str]:
    """Names of the selection methods that need the QE scores (the ``qe`` method or pre-filter)."""
    return [m.name for m in selection.methods if m.method == "qe" or "qe" in m.prefilter]


class FinetuneConfig(Section):
    """Step 7: finetune the base model on each selection."""

    enabled: bool = True
    train: TrainConfig = TrainConfig()
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)


class TestSetSpec(DatasetSpec):
    #: Becomes the directory of the test set's outputs: a safe name (gdig_core.names).
    name: SafeName
    #: Evaluate on the first N sentences of this set (overrides evaluation.max_sentences).
    max_sentences: int | None = Field(default=None, gt=0)


class EvaluationConfig(Section):
    enabled: bool = True
    test_sets: list[TestSetSpec] = Field(
        default_factory=lambda: [
            TestSetSpec(name="flores", path="de-en/flores.devtest.de", tgt_path="de-en/flores.devtest.en", format="parallel"),
            TestSetSpec(name="wmt22", path="de-en/wmt22.de", tgt_path="de-en/wmt22.en", format="parallel"),
        ]
    )
    max_sentences: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=16, gt=0)
    max_new_tokens: int = Field(default=128, gt=0)
    #: Per batch, at most this many new tokens per source token (+ 8), so a degenerate row that
    #: never stops does not hold its batch until max_new_tokens; None: max_new_tokens only.
    max_new_tokens_ratio: float | None = Field(default=2.5, gt=0)
    num_beams: int = Field(default=1, gt=0)
    #: bf16 autocast while generating; None = on when CUDA with bf16 support is used (CPU: fp32).
    bf16: bool | None = None
    #: A local COMET checkpoint (file or model dir); None skips COMET, with a note in the results.
    comet_model: str | None = None
    zero_shot: bool = True
    #: Also report the mean per-token NLL of each reference under the model (teacher forcing):
    #: cheap, and more sensitive than BLEU on small test sets.
    reference_nll: bool = True
    #: ``generated``: the reference NLL on the sentences that are translated (max_sentences);
    #: ``all``: on the whole test set, whatever max_sentences cuts generation to (one forward pass
    #: per sentence, no generation: low-variance where generation is expensive).
    reference_nll_sentences: Literal["generated", "all"] = "generated"

    @model_validator(mode="after")
    def _test_sets_named_once(self) -> EvaluationConfig:
        if self.enabled and not self.test_sets:
            raise ValueError("test_sets is empty: list at least one, or set evaluation.enabled: false")
        names = [t.name for t in self.test_sets]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"test_sets: the name {repeated[0]!r} is used twice (each gets its own directory)")
        return self


class OrchestrationConfig(Section):
    run_dir: str = "runs"
    shard_mode: Literal["local", "deployment"] = "local"
    shard_deployment: str = "gdig-shard/gdig-shard"
    #: Where shard outputs live when workers run elsewhere (a path or fsspec URL).
    shared_storage: str | None = None
    #: Name of the Prefect global concurrency limit every GPU task holds a slot of.
    gpu_concurrency_limit: str = "gpu"
    #: Slots of that limit when the pipeline has to create it (None: max_workers); an existing
    #: limit keeps its own count (``prefect gcl create gpu --limit N`` on a cluster).
    gpu_slots: int | None = Field(default=None, gt=0)
    #: Lease of a held slot, renewed while the task runs; a killed run's slots return to the pool
    #: when it expires (the Prefect server's minimum is 60 s).
    gpu_lease_seconds: float = Field(default=60, ge=60)
    #: Shards (and selections, finetunes, evaluations) run concurrently: threads in local mode,
    #: deployment runs in flight in deployment mode.
    max_workers: int = Field(default=1, gt=0)
    #: Retries of a transient failure (I/O, lost worker, OOM at batch size 1), with exponential
    #: backoff starting at retry_delay_seconds.
    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: float = Field(default=2.0, ge=0)
    #: Longest wait for a slot of the GPU limit; past it the run fails saying who holds the slots.
    gpu_slot_wait_seconds: float = Field(default=3600, gt=0)
    #: Deployment mode: longest wait for a worker to be online at the start, and for one to pick
    #: up each shard run; past it the run fails saying which pool needs a worker.
    worker_wait_seconds: float = Field(default=600, gt=0)
    #: Deployment mode: longest a shard run may take once picked up (a lost worker leaves it
    #: "Running" forever); past it the run is cancelled and the shard retried.
    shard_timeout_seconds: float = Field(default=6 * 3600, gt=0)
    #: Downstream cells (one finetune on one selection with one seed, then its evaluation): in this
    #: process (one at a time on a CPU, one per visible GPU in parallel), or each as a flow run of
    #: downstream_deployment on the work pool, inputs and outputs through shared_storage.
    downstream_mode: Literal["local", "deployment"] = "local"
    downstream_deployment: str = "gdig-downstream/gdig-downstream"
    #: Deployment mode: longest a cell run may take once picked up; past it the run is cancelled
    #: and the cell retried.
    cell_timeout_seconds: float = Field(default=48 * 3600, gt=0)
    #: Deployment mode: how often a running cell writes its heartbeat to shared storage, and how
    #: long a Running cell may go without a new one before it counts as lost (its worker died):
    #: then it is cancelled and retried, instead of waiting for cell_timeout_seconds.
    heartbeat_seconds: float = Field(default=15, gt=0)
    lost_after_seconds: float = Field(default=180, gt=0)
    #: Another run holds this run directory: wait for it (up to lock_wait_seconds) or fail at once.
    on_locked: Literal["wait", "fail"] = "wait"
    lock_wait_seconds: float = Field(default=3600, ge=0)


class PinnedStage(Section):
    """A stage output of an earlier run, reused as it is: its directory (the one holding
    ``_manifest.json``, as ``gdig pins RUN_DIR`` prints it) and the content hash it must have."""

    dir: str
    hash: str = Field(min_length=1)


class PinConfig(Section):
    """Reuse a reference model and curvature factors instead of fitting them on this run's pool, so
    a scheduled run over a grown pool scores only its new rows. Each pin is verified (every file
    against the directory's manifest, the manifest against ``hash``) and refused when it differs."""

    #: The reference model stage (``cas/reference/<key>``).
    reference: PinnedStage | None = None
    #: Curvature factors per scoring model (``reference``/``base``): ``cas/curvature/<key>``.
    factors: dict[Literal["reference", "base"], PinnedStage] = Field(default_factory=dict)


class GdigConfig(Section):
    name: SafeName = "gdig"
    data: DataConfig = DataConfig()
    prompt: PromptConfig = PromptConfig()
    model: ModelConfig = ModelConfig()
    reference: ReferenceConfig = ReferenceConfig()
    curvature: CurvatureConfig = CurvatureConfig()
    scoring: ScoringConfig = ScoringConfig()
    selection: SelectionConfig = SelectionConfig()
    qe: QEConfig = QEConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    pin: PinConfig = PinConfig()

    @model_validator(mode="after")
    def _pins_fit_the_run(self) -> GdigConfig:
        if self.pin.reference is not None and not self.reference.enabled:
            raise ValueError("pin.reference names a reference model, but reference.enabled is false "
                             "(the base model is scored): remove one of them")
        for label in self.pin.factors:
            if label not in self.scoring.models:
                raise ValueError(f"pin.factors.{label}: the pool is not scored at the {label} model "
                                 f"(scoring.models is {self.scoring.models})")
        return self

    @model_validator(mode="after")
    def _methods_use_scored_models(self) -> GdigConfig:
        for spec in self.selection.methods:
            if spec.model is not None and spec.model not in self.scoring.models:
                raise ValueError(f"selection method {spec.name!r} uses the {spec.model} model's scores, but "
                                 f"scoring.models is {self.scoring.models}: add {spec.model!r} there")
        return self

    @model_validator(mode="after")
    def _qe_when_used(self) -> GdigConfig:
        needing = uses_qe(self.selection)
        if needing and self.qe.enabled is False:
            raise ValueError(f"selection methods {needing} use the QE score, but qe.enabled is false")
        return self

    @property
    def qe_on(self) -> bool:
        """Whether the run computes the QE scores (qe.enabled, or None and a method uses them)."""
        return bool(self.qe.enabled) if self.qe.enabled is not None else bool(uses_qe(self.selection))

    def section_json(self, *names: str) -> str:
        """Canonical JSON of the named sections, for cache keys."""
        dumped = self.model_dump(mode="json")
        return json.dumps({n: dumped[n] for n in names}, sort_keys=True)

    def language_name(self, code: str) -> str:
        names = {**LANGUAGE_NAMES, **self.prompt.language_names}
        if code not in names:
            raise ConfigError(f"prompt.language_names: no name for language code {code!r}")
        return names[code]


def _parse_override_value(key: str, text: str) -> Any:
    """``--set`` values are YAML scalars/lists: ``3``, ``0.1``, ``true``, ``[1000, 2000]``, ``null``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML ({problem}); "
                          "e.g. --set selection.budgets=[100,200]") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_override_value(key.strip(), value)
    return raw


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        given = e.get("input")
        shown = f" (got {given!r})" if isinstance(given, str | int | float | bool) or given is None else ""
        lines.append(f"  {path}: {e['msg']}{shown}")
    return "\n".join(lines)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> GdigConfig:
    try:
        return GdigConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> GdigConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    Raises ConfigError naming the file, the key path and the reason.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        raw = loaded
    # A section given in part keeps the defaults of the keys it leaves out.
    raw = deep_merge(GdigConfig().model_dump(mode="json"), raw)
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source)


def resolve_data_path(cfg: DataConfig, path: str) -> Path:
    """Resolve a dataset path against ``data_dir`` unless absolute or existing as given."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return Path(cfg.data_dir) / p
