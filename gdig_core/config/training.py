"""Settings of the training wing: the model, LoRA, training runs (reference model and finetunes).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gdig_core.config.base import Section


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


class FinetuneConfig(Section):
    """Step 7: finetune the base model on each selection."""

    enabled: bool = True
    train: TrainConfig = TrainConfig()
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
