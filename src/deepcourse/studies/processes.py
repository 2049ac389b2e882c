"""Which GPU each of several jobs on one machine runs on (sweep and study workers, `-j N`)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import sys
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


# -- a run stops with its worker ------------------------------------------------------------------------------------
# A run started by a study's worker stops with it: when the worker dies (SIGKILL, a lost node), the run gets
# SIGTERM, saves a checkpoint and exits, so no orphan keeps writing a run directory that a resumed study retries.
PARENT_ENV = "DEEPCOURSE_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def follow_parent() -> None:
    """Ask Linux to send this process SIGTERM when the worker named by $DEEPCOURSE_PARENT_PID exits."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return
    if os.getppid() != int(parent):  # the worker died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
