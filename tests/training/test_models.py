"""Model loading: tiny models for tests and the demo, local directories, the offline Gemma alias."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from paths import PROJECT_ROOT

from gdig_core.config import ModelConfig, TinyModelConfig, load_config
from gdig_core.data.encoding import collate, encode_pairs
from gdig_core.io import tree_sha256
from gdig_core.training.models import GEMMA_ALIAS, build_tiny_model, gemma_checkpoint, load_model

TEXTS = ["Das Haus ist klein.", "The house is small.", "Guten Morgen, wie geht es?", "Good morning, how are you?"] * 20


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_tiny_model_builds_and_reloads_offline(tmp_path: Path, arch: str) -> None:
    tiny = TinyModelConfig(architecture=arch, vocab_size=300)
    path = build_tiny_model(tiny, TEXTS, tmp_path / "m")
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    model, tok = load_model(ModelConfig(name="tiny", device="cpu"), path)
    assert model.config.model_type == {"llama": "llama", "gemma3": "gemma3_text", "qwen2": "qwen2"}[arch]
    assert tok.pad_token_id is not None and tok.bos_token_id is not None
    ids = torch.tensor([tok("Das Haus")["input_ids"]])
    assert model(ids).logits.shape[-1] == len(tok)


def test_tiny_model_is_deterministic(tmp_path: Path) -> None:
    a = build_tiny_model(TinyModelConfig(vocab_size=300), TEXTS, tmp_path / "a", seed=1)
    b = build_tiny_model(TinyModelConfig(vocab_size=300), TEXTS, tmp_path / "b", seed=1)
    assert tree_sha256(a / "model.safetensors") == tree_sha256(b / "model.safetensors")
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    assert not list(tmp_path.glob(".*"))  # no temp dirs left behind


def test_remote_code_stays_off_unless_enabled() -> None:
    assert ModelConfig().trust_remote_code is False


@pytest.mark.slow
def test_gemma_alias_loads_tokenises_german_and_computes_a_loss() -> None:
    cache = Path(os.environ.get("GDIG_CACHE", PROJECT_ROOT / ".cache" / "gdig"))
    cfg = load_config(None, [f"model.name={GEMMA_ALIAS}", f"model.cache_dir={cache}", "model.device=cpu"])
    path = gemma_checkpoint(cache)
    assert (path / "config.json").exists() and list(path.glob("*.safetensors"))
    model, tok = load_model(cfg.model)
    assert model.config.model_type.startswith("gemma3")
    assert sum(p.numel() for p in model.parameters()) > 250e6
    row = {"id": "g", "src_lang": "de", "tgt_lang": "en", "src": "Das Haus ist klein.", "tgt": "The house is small."}
    (enc,) = encode_pairs(tok, [row], cfg)
    assert enc.input_ids[0] == tok.bos_token_id == 2  # BOS prepended by us, whatever the tokenizer does
    assert enc.input_ids.count(tok.bos_token_id) == 1
    with torch.no_grad():
        loss = model(**collate([enc], tok.pad_token_id)).loss.item()
    # A real pretrained model knows this sentence; a random 262k-vocab model would be near ln(262144) = 12.5.
    assert 0.0 < loss < 4.0


def test_checkpoint_dirs_get_the_umask_mode(tmp_path: Path) -> None:
    path = build_tiny_model(TinyModelConfig(vocab_size=300), TEXTS, tmp_path / "m")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (path / "config.json").stat().st_mode & 0o777 == 0o666 & ~mask
