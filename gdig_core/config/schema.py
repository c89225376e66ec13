"""The whole config: ``GdigConfig`` (one section per stage) and its loading from YAML.

Unknown keys are errors (``extra="forbid"``): a typo must not silently fall back to a default.
Types are strict: ``true`` is not a batch size and ``2.5`` is not a step count. Names that become
directory names are checked (``gdig_core.names``), and so is the prompt template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from gdig_core.config.base import LANGUAGE_NAMES, ConfigError, Section
from gdig_core.config.data import DataConfig, PromptConfig
from gdig_core.config.evaluation import EvaluationConfig
from gdig_core.config.filters import QEConfig, uses_qe
from gdig_core.config.influence import CurvatureConfig, ScoringConfig
from gdig_core.config.orchestration import OrchestrationConfig, PinConfig
from gdig_core.config.selection import SelectionConfig
from gdig_core.config.training import FinetuneConfig, ModelConfig, ReferenceConfig
from gdig_core.config.yaml_strict import load_yaml
from gdig_core.names import SafeName


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
        return load_yaml(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML ({problem}); "
                          "e.g. --set selection.budgets=[100,200]") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (in place) and return it. The same key path
    twice is an error: which one was meant is not for the order of the options to decide."""
    given: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        parts = [part.strip() for part in key.split(".")]
        if not all(parts):
            raise ConfigError(f"--set {item!r}: the key path {key!r} has an empty part; expected e.g. selection.tau=0.5")
        key = ".".join(parts)
        if key in given:
            raise ConfigError(f"--set {key} is given twice ({given[key]!r} and {value!r}): keep one")
        given[key] = value
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_override_value(key, value)
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


#: Largest config file read; the shipped ones are a few KB (a device or a stray data file is not one).
MAX_CONFIG_BYTES = 1 << 20


def _read_config_text(path: Path) -> str:
    import stat

    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise ConfigError(f"cannot read config {path}: {kind}; expected a YAML file")
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> GdigConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    Raises ConfigError naming the file, the key path and the reason.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        text = _read_config_text(Path(path))
        try:
            loaded = load_yaml(text)
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
