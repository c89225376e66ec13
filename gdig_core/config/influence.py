"""Settings of the influence wing: curvature fits, scoring and the gradient store.
"""

from __future__ import annotations

import importlib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gdig_core.config.base import Section


class CurvatureConfig(Section):
    #: identity (plain gradient similarity) by default: on Gemma-3-270M it ranked clean pairs above
    #: noisy ones better than EK-FAC and K-FAC (reports/evidence-*) and needs no curvature passes.
    #: ekfac is the paper's (and kronfluence's) choice.
    #: A strategy of gdig_core.influence.preconditioners: ekfac, kfac, identity (or one a project registers).
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
        importlib.import_module("gdig_core.influence.preconditioners").get(value)
        return value


class GradientStoreConfig(Section):
    """Projected candidate gradients kept on disk, so a new seed set is scored without a pass over
    the pool (see gdig_core.influence.grad_store). Curvature for that path is fitted on the projected
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
    #: gdig_core.influence.variants): curvature ekfac/kfac/identity, normalisation raw/token/cosine. The
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
        from gdig_core.influence.variants import parse_variant

        for name in value:
            parse_variant(name)
        return value

    @field_validator("models")
    @classmethod
    def _models_listed_once(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("scoring.models must list 'reference' and/or 'base', each once")
        return value
