"""Which GPU each local downstream cell runs on: one cell per visible device at a time, each pinned
by its device index. On a CPU there is one "device" and the grid stays serial: on 2 cores, two
cells at once in their own processes were no faster than the in-process serial grid (the second
core's gain went to process starts and model loads; BENCHMARKS.md)."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from contextlib import contextmanager


def visible_gpus(device: str) -> int:
    """How many GPUs local cells may spread over, for the ``model.device`` setting: every visible
    CUDA device for ``auto`` and ``cuda``; none for ``cpu`` or an explicit ``cuda:N`` (pinned by
    the user)."""
    if device not in ("auto", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class DevicePool:
    """Device indices ``0..n-1``, one per running cell: a cell takes a free one and waits while
    none is free, so no two cells share a device."""

    def __init__(self, n: int) -> None:
        self.size = n
        self._free: queue.Queue[int] = queue.Queue()
        for index in range(n):
            self._free.put(index)

    @contextmanager
    def device(self) -> Iterator[int]:
        index = self._free.get()
        try:
            yield index
        finally:
            self._free.put(index)


def pinned_env(index: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` of a child process that sees only the ``index``-th GPU this process
    sees (as its ``cuda:0``): an index into this process's own ``CUDA_VISIBLE_DEVICES`` when that is
    set, so a pipeline pinned to GPUs 2,3 hands out 2 and 3."""
    env = os.environ if environ is None else environ
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible:
        if index >= len(visible):
            raise ValueError(f"device index {index}: this process sees only CUDA_VISIBLE_DEVICES={','.join(visible)}")
        return {"CUDA_VISIBLE_DEVICES": visible[index]}
    return {"CUDA_VISIBLE_DEVICES": str(index)}
