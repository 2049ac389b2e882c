"""Which GPU each of several jobs on one machine runs on (sweep and study workers, `-j N`)."""
from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Iterator, Sequence


def visible_gpus() -> list[str]:
    """The GPUs sweep jobs may use: those CUDA_VISIBLE_DEVICES lists when it is set (empty: none), else every GPU
    torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class DeviceSlots:
    """Hands each running job a GPU of its own (round robin when there are more jobs than GPUs): without it every
    job would start on the default GPU, 0. Without GPUs, jobs keep the environment they have."""

    def __init__(self, jobs: int, gpus: Sequence[str]) -> None:
        self.free: queue.Queue[str | None] = queue.Queue()
        for i in range(max(1, jobs)):
            self.free.put(gpus[i % len(gpus)] if gpus else None)

    @contextlib.contextmanager
    def take(self) -> Iterator[dict[str, str]]:
        gpu = self.free.get()
        try:
            yield {} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu}
        finally:
            self.free.put(gpu)
