"""The settings of every stage: one pydantic schema, loaded from YAML with ``--set`` overrides.

One module per wing (``data``, ``training``, ``influence``, ``filters``, ``selection``,
``evaluation``, ``orchestration``), joined by :mod:`gdig_core.config.schema` (``GdigConfig``,
``load_config``). This package gathers every public name, so ``from gdig_core.config import X``
works whatever module defines X. May import: the root's shared modules (``names``); the
validators look up the influence wing's registries by name, inside functions, when a config is checked.
"""

from __future__ import annotations

from gdig_core.config.base import (
    DEFAULT_DATA_DIR,
    GDIG_PROMPT,
    LANGUAGE_NAMES,
    PROJECT_ROOT,
    ConfigError,
    Section,
)
from gdig_core.config.data import (
    DataConfig,
    DatasetSpec,
    NoiseConfig,
    PromptConfig,
    WeakMTConfig,
    resolve_data_path,
)
from gdig_core.config.evaluation import EvaluationConfig, TestSetSpec
from gdig_core.config.filters import QEConfig, uses_qe
from gdig_core.config.influence import CurvatureConfig, GradientStoreConfig, ScoringConfig
from gdig_core.config.orchestration import OrchestrationConfig, PinConfig, PinnedStage
from gdig_core.config.prompt import PROMPT_FIELDS, check_template
from gdig_core.config.schema import (
    GdigConfig,
    apply_overrides,
    config_from_dict,
    deep_merge,
    format_validation_error,
    load_config,
)
from gdig_core.config.selection import (
    ABLATION_SUFFIXES,
    MethodSpec,
    SelectionConfig,
    ablation_specs,
    method_spec,
)
from gdig_core.config.training import (
    FinetuneConfig,
    LoraConfig,
    ModelConfig,
    ReferenceConfig,
    TinyModelConfig,
    TrainConfig,
)

__all__ = ['PROJECT_ROOT', 'DEFAULT_DATA_DIR', 'LANGUAGE_NAMES', 'GDIG_PROMPT', 'ConfigError', 'Section', 'PROMPT_FIELDS', 'check_template', 'DatasetSpec', 'WeakMTConfig', 'NoiseConfig', 'DataConfig', 'PromptConfig', 'resolve_data_path', 'TinyModelConfig', 'ModelConfig', 'LoraConfig', 'TrainConfig', 'ReferenceConfig', 'FinetuneConfig', 'CurvatureConfig', 'GradientStoreConfig', 'ScoringConfig', 'MethodSpec', 'ABLATION_SUFFIXES', 'ablation_specs', 'method_spec', 'SelectionConfig', 'QEConfig', 'uses_qe', 'TestSetSpec', 'EvaluationConfig', 'OrchestrationConfig', 'PinnedStage', 'PinConfig', 'GdigConfig', 'apply_overrides', 'format_validation_error', 'deep_merge', 'config_from_dict', 'load_config']
