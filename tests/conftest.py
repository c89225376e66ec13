"""Shared fixtures: the real data directory (beside the project, never committed) and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("GDIG_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data" / "mt"))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "de-en" / "pool.wmt17-20.jsonl").exists():
        pytest.fail(f"the MT data directory is missing: {DATA_DIR} (set GDIG_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny Llama checkpoint with a BPE tokenizer trained on 500 real de-en pairs."""
    from gdig_core.config import DataConfig, DatasetSpec, TinyModelConfig
    from gdig_core.data import read_dataset
    from gdig_core.models import build_tiny_model

    cfg = DataConfig(data_dir=str(data_dir))
    table = read_dataset(DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=500), cfg, "pool").table
    texts = table.column("src").to_pylist() + table.column("tgt").to_pylist()
    return build_tiny_model(TinyModelConfig(vocab_size=800), texts, tmp_path_factory.mktemp("tiny") / "model")


# Orchestration fixtures (a real Prefect server, workers, pipeline runs) live in their own module.
from prefect_fixtures import baseline_run, prefect_server  # noqa: E402,F401
