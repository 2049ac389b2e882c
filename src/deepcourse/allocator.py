"""Keep freed memory for reuse on glibc, so CPU training steps do not page-fault their activations anew.

glibc's malloc serves big blocks (a batch, a conv layer's output) with mmap or returns the top of the heap to the
kernel as soon as it is free. A training step frees the same few megabytes it will allocate again a millisecond
later, so every step touches fresh pages, and each page costs a fault: on this project's 2-core VMs, about 1,700
faults per LeNet step on 32x32 images (benchmarks/cpu_allocator.py measures the cost). jemalloc and tcmalloc avoid
it, but need LD_PRELOAD; two `mallopt` calls get the same effect from inside the process: serve blocks up to
32 MiB from the heap, and keep up to 1 GiB of free heap instead of trimming it.

The cost is that the process keeps its peak memory until it exits, which is what a training process does anyway.
It changes nothing where it does not apply (macOS, Windows, musl, a preloaded allocator) or where the user chose
their own thresholds through glibc's MALLOC_*_ environment variables.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def _preloaded_allocator() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))


def _user_thresholds() -> bool:
    return any(v in os.environ for v in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")) or \
        "malloc" in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Apply the glibc thresholds once per process; returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if _preloaded_allocator() or _user_thresholds():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
