"""Prefect artifacts (progress, tables, markdown) that degrade to no-ops outside a Prefect run,
so the same task code runs under ``task.fn(...)`` in unit tests."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.exceptions import MissingContextError


def artifact_key(*parts: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def _safe(fn, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN001
    try:
        return fn(*args, **kwargs)
    except MissingContextError:
        return None
    except Exception as exc:  # noqa: BLE001 - an artifact must never fail a stage
        try:
            get_run_logger().warning("artifact not recorded: %s", exc)
        except MissingContextError:
            pass
        return None


def progress(key: str, fraction: float, description: str) -> UUID | None:
    return _safe(create_progress_artifact, progress=100.0 * fraction, key=key, description=description)


def update_progress(artifact_id: UUID | None, fraction: float, description: str | None = None) -> None:
    if artifact_id is not None:
        _safe(update_progress_artifact, artifact_id=artifact_id, progress=100.0 * fraction, description=description)


def table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    if rows:
        _safe(create_table_artifact, table=rows, key=key, description=description)


def markdown(key: str, text: str, description: str) -> None:
    _safe(create_markdown_artifact, markdown=text, key=key, description=description)


def logger():  # noqa: ANN201 - a Prefect logger inside a run, the module logger outside
    import logging

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("gdig")
