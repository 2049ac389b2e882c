"""One writer per run directory: a lock held by the process that trains in it, for as long as it does.

Two processes resuming the same run would interleave their checkpoints and truncate each other's metrics.jsonl. The
lock is an operating-system lock on RUN_DIR/.lock (`flock`; `msvcrt.locking` on Windows), which the kernel releases
when its process ends, however it ends: a lock file left behind by a killed run never blocks a later resume. The file
only says who holds the lock (pid, host, since when), for the message the second process prints.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path
from types import TracebackType

from deepcourse.errors import CheckpointError

LOCK_FILE = ".lock"

if sys.platform != "win32":
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
else:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True


class RunLock:
    """The held lock of one run directory; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # unlinked before unlocking: whoever locks next re-checks that its file is still the one at `path`
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except FileNotFoundError:
            pass  # the run directory was removed (a run that failed before its first checkpoint)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def acquire(run_dir: Path) -> RunLock:
    """Lock `run_dir` (which must exist) for this process, or raise a CheckpointError naming the holder."""
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            holder = _describe(fd)
            os.close(fd)
            raise CheckpointError(f"{run_dir}: {in_use(holder)}")
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder released and removed the file between our open and our lock: try the new one
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": _dt.datetime.now().isoformat(timespec="seconds")}).encode())
    return RunLock(path, fd)


def holder(run_dir: Path) -> str | None:
    """Who is training in `run_dir` now ('pid 123 on host a, since ...'), or None; a stale lock file is nobody."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            return None
        return _describe(fd)
    finally:
        os.close(fd)  # closing gives up a lock taken only to look


def in_use(described: str) -> str:
    return (f"another deepcourse process is training in this run directory ({described}); wait for it to finish, "
            f"or stop it (Ctrl-C saves a checkpoint) and resume then")


def _describe(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "a process that has not said who it is yet"
    return f"pid {info['pid']} on host {info.get('host', '?')}, since {info.get('since', '?')}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
