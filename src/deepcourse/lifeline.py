"""A run started by a study's worker stops with it: when the worker dies (SIGKILL, a lost node), the run gets
SIGTERM, saves a checkpoint and exits, so no orphan keeps writing a run directory that a resumed study retries."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

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
