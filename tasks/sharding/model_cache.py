"""Models loaded for shard work and seed preconditioning, cached per thread: loading can cost a
minute (GGUF dequantising), so a thread keeps the last model it loaded until a stage asks for a
different one; hooks make a model unsafe to share between threads running backward passes."""

from __future__ import annotations

import threading
from typing import Any

from gdig_core.config import GdigConfig

_LOCAL = threading.local()
#: transformers' from_pretrained is not thread-safe (its empty-weights init is process-global).
LOAD_LOCK = threading.Lock()


def loaded_model(cfg: GdigConfig, path: str) -> tuple[Any, Any]:
    """(model, tokenizer) of the checkpoint at ``path`` under ``cfg.model``, loaded once per thread."""
    from gdig_core.training.models import load_model

    cache: dict[tuple[str, str], tuple[Any, Any]] = getattr(_LOCAL, "models", {})
    key = (path, cfg.model.model_dump_json())
    if key not in cache:
        cache.clear()  # one model per thread: the previous stage's model is done
        with LOAD_LOCK:
            cache[key] = load_model(cfg.model, path=path)
        _LOCAL.models = cache
    return cache[key]
