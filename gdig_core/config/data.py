"""Settings of the data wing: datasets on disk, the pool's filters, labelled noise, the prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gdig_core.config.base import DEFAULT_DATA_DIR, GDIG_PROMPT, Section
from gdig_core.config.prompt import check_template


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
    """Labelled noise injected into the pool after sampling (experiments: see gdig_core.data.noise).

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
    #: Longest line read from a text file, in bytes with its line break, checked before the line is
    #: decoded: a longer line is skipped without being held in memory (quarantined in the pool).
    max_line_bytes: int = Field(default=1 << 20, gt=0)
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


def resolve_data_path(cfg: DataConfig, path: str) -> Path:
    """Resolve a dataset path against ``data_dir`` unless absolute or existing as given."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return Path(cfg.data_dir) / p
