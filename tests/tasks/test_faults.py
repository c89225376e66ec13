"""Faults and retries (``tasks.runtime.faults``): CUDA-OOM batch halving and which errors are
worth another try."""

from __future__ import annotations

import pytest

from tasks.runtime.faults import TransientError, is_transient, with_oom_backoff


def test_oom_halves_the_batch_until_it_fits() -> None:
    seen = []

    def run(bs: int) -> int:
        seen.append(bs)
        if bs > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return bs

    assert with_oom_backoff(run, 16) == 2 and seen == [16, 8, 4, 2]
    with pytest.raises(ValueError):
        with_oom_backoff(lambda bs: (_ for _ in ()).throw(ValueError("bug")), 16)

    def always(bs: int) -> int:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        with_oom_backoff(always, 4)


def test_transient_classification() -> None:
    assert is_transient(OSError("nfs hiccup")) and is_transient(TransientError("worker lost"))
    assert is_transient(ConnectionError()) and is_transient(TimeoutError())
    assert not is_transient(ValueError("a bug")) and not is_transient(KeyError("x"))
