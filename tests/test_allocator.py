"""deepcourse.training.accelerator: freed memory is kept for reuse on glibc, and left alone where the user chose
otherwise.

Each case runs in a fresh interpreter: glibc's thresholds are process-wide and cannot be put back.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the thresholds are glibc's")

PROBE = """
import resource, sys
from deepcourse.training.accelerator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults_of_reallocating():
    # a training step in miniature: eight 1 MiB activations, touched, then all freed; again
    total = 0
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [bytearray(1 << 20) for _ in range(8)]
        total += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del blocks
    return total
faults_of_reallocating()  # the first allocation faults in any case
print(applied, faults_of_reallocating())
"""


def probe(mode: str, **env: str) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**environ, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_kept_memory_is_reused_without_page_faults() -> None:
    applied, faults = probe("keep")
    assert applied
    assert faults < 100  # 5 x 8 MiB would be 10,240 faults of 4 KiB pages


def test_glibc_defaults_fault_every_reallocation() -> None:
    """The problem being solved: with the defaults, the freed top of the heap goes back to the kernel and the
    next step's activations fault their pages in again."""
    applied, faults = probe("defaults")
    assert not applied
    assert faults > 5 * 1000


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}])
def test_thresholds_the_user_chose_are_respected(env: dict[str, str]) -> None:
    applied, _ = probe("keep", **env)
    assert not applied
