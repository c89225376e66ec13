"""Settings of the evaluation wing: test sets, generation, metrics.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gdig_core.config.base import Section
from gdig_core.config.data import DatasetSpec
from gdig_core.names import SafeName


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
