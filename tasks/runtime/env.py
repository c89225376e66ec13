"""Prefect settings for the local default: an ephemeral server whose SQLite lives in the run dir.

Must run before ``prefect`` is imported: Prefect reads its settings from the environment when
its settings context is first built.
"""

from __future__ import annotations

import os
from pathlib import Path

from gdig_core.write_faults import writing


def configure_local_prefect(run_dir: str | Path) -> dict[str, str]:
    """Point Prefect at an ephemeral server under ``<run_dir>/.prefect`` unless an API is set.

    A user (or a test) who exported ``PREFECT_API_URL`` keeps their server; everything else gets
    a self-contained SQLite database so one command works on a fresh, offline machine.
    Returns the variables that were set.
    """
    changed: dict[str, str] = {}

    def setdefault(name: str, value: str) -> None:
        if not os.environ.get(name):
            os.environ[name] = value
            changed[name] = value

    # Analytics on a fresh database once showed "database is locked"; offline it is useless anyway.
    setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    setdefault("DO_NOT_TRACK", "1")
    setdefault("TOKENIZERS_PARALLELISM", "false")
    # The method's own progress lines (finetune steps, evaluation scores) in the run's logs and UI.
    setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "gdig_core")
    if os.environ.get("PREFECT_API_URL"):
        return changed
    home = Path(run_dir).resolve() / ".prefect"
    with writing(home):
        home.mkdir(parents=True, exist_ok=True)
    setdefault("PREFECT_HOME", str(home))
    # Only the bundled default profile enables the ephemeral server; say so explicitly.
    setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
    # A fresh SQLite database runs its migrations first; the 20 s default is too short on 2 cores.
    setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.5")
    setdefault("PREFECT_UI_ENABLED", "true")
    return changed
