"""Settings of the selection wing: the methods (with their pre-filters and ablations) and budgets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from gdig_core.config.base import Section
from gdig_core.names import SafeName


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
            from gdig_core.influence.variants import parse_variant

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
