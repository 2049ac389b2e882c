"""Which GPU and how many CPU threads each of several jobs on one machine gets (sweep and study workers, `-j N`), a
run that stops when its worker dies, and a worker that stops on Ctrl-C (or a Slurm preemption) once its runs have
saved."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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
    job would start on the default GPU, 0. Several jobs at a time also share the CPU cores (`cpu_share`)."""

    def __init__(self, jobs: int, gpus: Sequence[str]) -> None:
        self.free: queue.Queue[str | None] = queue.Queue()
        for i in range(max(1, jobs)):
            self.free.put(gpus[i % len(gpus)] if gpus else None)
        self.threads = cpu_share(jobs)

    @contextlib.contextmanager
    def take(self) -> Iterator[dict[str, str]]:
        gpu = self.free.get()
        try:
            yield {**self.threads, **({} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu})}
        finally:
            self.free.put(gpu)


def cpu_share(jobs: int) -> dict[str, str]:
    """The environment that divides this process's cores among `jobs` runs at a time (OMP_NUM_THREADS: each run's
    torch threads): N runs of torch's default, one thread per core each, would run N threads on every core, and
    spinning OpenMP threads that wait on one another make every step slower. One job, or an OMP_NUM_THREADS the user
    set, is left as it is; a recipe's `train.threads` still wins inside its run."""
    if jobs < 2 or os.environ.get("OMP_NUM_THREADS"):
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"OMP_NUM_THREADS": str(max(1, cores // jobs))}


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


# -- a worker stops on Ctrl-C -----------------------------------------------------------------------------------------
#: the exit status of a run stopped by Ctrl-C or SIGTERM after saving (128 + the signal's number)
STOP_CODES = {128 + int(signal.SIGINT): int(signal.SIGINT), 128 + int(signal.SIGTERM): int(signal.SIGTERM)}


class Stopped(Exception):
    """A study's worker stopped by Ctrl-C or SIGTERM once its running trials had saved: the command exits 128 + the
    signal's number (130 for Ctrl-C), as `deepcourse run` does, and `--resume` continues the study."""

    def __init__(self, signum: int, folder: Path, saved: Sequence[Path]) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.folder, self.saved = signum, folder, list(saved)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class WorkerStop:
    """Ctrl-C (SIGINT) or SIGTERM to a worker: it takes no new trial and waits for its running trials to save and
    exit. From a terminal they get the Ctrl-C with it; a signal sent to the worker alone is passed on to them as
    SIGTERM, which a run that is already saving ignores. A trial's run that exits 130 or 143 on its own (stopped,
    state saved) stops the worker too: whoever stopped it wanted the study to stop, not its next trial to start."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saved: list[Path] = []  # runs that stopped with their state saved
        self._children: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.RLock()  # also taken by the signal handler, on the main thread
        self._idle = threading.Condition(self._lock)
        self._loops = 0  # loops taking trials (`working`)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> WorkerStop:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, lambda s, frame: self.request(s))
            except ValueError:  # not the main thread (embedded use): the default behaviour stays
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        """Stop taking trials; ask the running ones to save and stop."""
        with self._lock:
            first = self.signum is None
            self.signum = self.signum if self.signum is not None else int(signum)
            children = [proc for proc in self._children if proc.poll() is None]
        if first:
            log.info(f"\ndeepcourse: {signal.Signals(signum).name}: the study takes no new trial; waiting for "
                     f"{len(children)} running trial(s) to save", extra={"stderr": True})
        for proc in children:
            proc.send_signal(signal.SIGTERM)

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._children.add(proc)
        if self.requested and proc.poll() is None:  # the stop came while it was starting
            proc.send_signal(signal.SIGTERM)

    def ended(self, proc: subprocess.Popen[bytes], run: Path, code: int) -> bool:
        """Whether `proc` (the run in `run`) was stopped rather than failed; a run stopped on its own stops the
        worker too."""
        with self._lock:
            self._children.discard(proc)
        stopped = code in STOP_CODES or (code < 0 and self.requested)  # < 0: killed while it started
        if stopped:
            self.request(STOP_CODES.get(code, self.signum or int(signal.SIGINT)))
            self.saved.append(run)
        return stopped

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """A loop that takes trials, for `wait_stopped` to wait on."""
        with self._idle:
            self._loops += 1
        try:
            yield
        finally:
            with self._idle:
                self._loops -= 1
                self._idle.notify_all()

    def wait_stopped(self, timeout: float) -> bool:
        """After `request`: wait until every loop has recorded its stopped trial and left (it takes no other) and
        every run started has exited, as a worker must before it is requeued: its successor resumes those runs.
        False when `timeout` ran out first (the runs still going are killed: their last checkpoint stands)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            done = self._idle.wait_for(lambda: self._loops == 0, timeout)
            children = list(self._children)
        for proc in children:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                done = False
        return done

    def raise_if_stopped(self, folder: Path) -> None:
        if self.signum is not None:
            raise Stopped(self.signum, folder, self.saved)
