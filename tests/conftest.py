"""Shared fixtures: the real data directory (beside the project, never committed), tiny models, one
torch thread; the orchestration fixtures come from prefect_fixtures.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from paths import DATA_DIR

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
    from gdig_core.data.readers import read_dataset
    from gdig_core.training.models import build_tiny_model

    cfg = DataConfig(data_dir=str(data_dir))
    table = read_dataset(DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=500), cfg, "pool").table
    texts = table.column("src").to_pylist() + table.column("tgt").to_pylist()
    return build_tiny_model(TinyModelConfig(vocab_size=800), texts, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread; two threads on a busy 2-core machine were 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Orchestration fixtures (a real Prefect server, workers, pipeline runs) live in their own module.
from prefect_fixtures import baseline_run, prefect_server  # noqa: E402,F401


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001 - pytest's hook
    """The fuzzing harness's counts per input surface (tests/fuzz_support.py), when it ran."""
    module = __import__("sys").modules.get("fuzz_support")
    if module is None or not module.COUNTS:
        return
    terminalreporter.section("fuzzing harness: generated inputs per surface")
    keys = ("tried", "accepted", "quarantined", "refused", "tracebacks", "hangs", "escapes")
    terminalreporter.write_line(f"{'surface':<22}" + "".join(f"{k:>12}" for k in keys))
    for surface, counts in sorted(module.COUNTS.items()):
        terminalreporter.write_line(f"{surface:<22}" + "".join(f"{counts.get(k, 0):>12}" for k in keys))
    module.write_counts(os.environ.get("GDIG_FUZZ_COUNTS"))
