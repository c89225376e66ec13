"""Failure handling around shard work: transient-error retries, CUDA OOM batch halving, and
test-only fault injection (``GDIG_FAULTS``) so the retry and resume paths run in tests."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class TransientError(RuntimeError):
    """A failure worth retrying (lost worker, flaky storage)."""


def is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def is_transient(exc: BaseException | None) -> bool:
    """Retry I/O and connection errors and declared transient ones; a bug fails at once."""
    return isinstance(exc, OSError | TimeoutError | ConnectionError | TransientError) or (
        exc is not None and is_oom(exc)
    )


def retry_condition(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's callback signature
    """Prefect ``retry_condition_fn``: retry only transient failures."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - we classify whatever the task raised
        return is_transient(exc)
    return False


def with_oom_backoff(run: Callable[[int], T], batch_size: int, logger: logging.Logger | None = None) -> T:
    """Call ``run(batch_size)``; on CUDA out-of-memory halve the batch and try again (down to 1)."""
    bs = batch_size
    while True:
        try:
            return run(bs)
        except Exception as exc:
            if not is_oom(exc) or bs <= 1:
                raise
            bs //= 2
            if logger:
                logger.warning("out of memory at batch size %d; retrying with %d", bs * 2, bs)
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover
                pass


def inject(kind: str, index: int, batch_size: int | None = None) -> None:
    """Test hook. ``GDIG_FAULTS`` is JSON such as ``{"scores:1": "oserror", "delay": 0.5,
    "scores:2": "oom>2"}``: fail shard 1 with an OSError every time, sleep 0.5 s in every shard
    (and in every dispatched downstream cell, before its work), raise an OOM in shard 2 while the
    batch size is above 2. Unset in normal use."""
    spec = os.environ.get("GDIG_FAULTS")
    if not spec:
        return
    faults = json.loads(spec)
    if faults.get("delay"):
        time.sleep(float(faults["delay"]))
    fault = faults.get(f"{kind}:{index}")
    if fault is None:
        return
    if fault == "oserror":
        raise OSError(f"injected I/O failure in {kind} shard {index}")
    if fault == "valueerror":
        raise ValueError(f"injected bug in {kind} shard {index}")
    if fault.startswith("oom>") and batch_size is not None and batch_size > int(fault[4:]):
        raise RuntimeError(f"CUDA out of memory (injected, batch {batch_size})")


def kill_point(name: str, index: int | None = None) -> None:
    """Test hook for kill-and-resume tests. With ``GDIG_FAULTS={"kill": "reference:1"}`` the
    process group is SIGKILLed right here (after reference-training step 1): nothing gets to clean
    up, as when a machine dies. Points: ``reference:<step>``, ``finetune:<step>``,
    ``curvature_stats:<shard>``, ``lambda_stats:<shard>``, ``scores:<shard>``, ``gradients:<shard>``
    (a pass that only fills the gradient store), ``evaluation``."""
    spec = os.environ.get("GDIG_FAULTS")
    if not spec:
        return
    target = json.loads(spec).get("kill")
    here = name if index is None else f"{name}:{index}"
    if target == here:
        import signal

        os.killpg(os.getpgrp(), signal.SIGKILL)
