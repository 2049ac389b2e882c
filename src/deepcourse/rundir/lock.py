"""One writer per run directory: a lock held by the process that trains in it, for as long as it does.

Two processes resuming the same run would interleave their checkpoints and truncate each other's metrics.jsonl. The
lock is an operating-system lock on RUN_DIR/.lock (`flock`; `msvcrt.locking` on Windows), which the kernel releases
when its process ends, however it ends: a lock file left behind by a killed run never blocks a later resume. The file
only says who holds the lock (pid, host, since when), for the message the second process prints.

Some cluster filesystems have no `flock` (Lustre mounted without `-o flock`, NFS without a lock manager: ENOLCK,
ENOSYS or EOPNOTSUPP). There the lock falls back, with a warning, to an exclusive lock file, RUN_DIR/.lockfile,
created with O_EXCL and holding host and pid. It guarantees one writer as long as the filesystem's O_EXCL does (NFS v3
and later, Lustre); a lock file left by a killed process on this host is recognised (its pid is gone) and taken
over, one left by a process on another host is not: the message says to remove it once that process is gone.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import sys
import warnings
from pathlib import Path
from types import TracebackType

from deepcourse.errors import CheckpointError, RecipeWarning

LOCK_FILE = ".lock"
#: the exclusive lock file of filesystems without flock
FALLBACK_FILE = ".lockfile"
#: what flock raises where the filesystem cannot lock (as opposed to "someone else holds it")
NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}

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

    def __init__(self, path: Path, fd: int | None, *, fallback: bool = False) -> None:
        self.path = path
        self._fd: int | None = fd
        self._held = True
        self.fallback = fallback  # an exclusive lock file (no flock on this filesystem)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self.fallback:
            if _holder_info(self.path).get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            return
        assert self._fd is not None
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
        try:
            locked = _try_lock(fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in NO_FLOCK:
                raise
            path.unlink(missing_ok=True)
            return _acquire_file(run_dir, exc)
        if not locked:
            holder = _describe(fd)
            os.close(fd)
            raise CheckpointError(f"{run_dir}: {in_use(holder)}")
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder released and removed the file between our open and our lock: try the new one
    os.ftruncate(fd, 0)
    os.write(fd, _whoami())
    return RunLock(path, fd)


def _acquire_file(run_dir: Path, why: OSError) -> RunLock:
    """The fallback: create RUN_DIR/.lockfile exclusively, taking over one whose process is gone (same host)."""
    path = run_dir / FALLBACK_FILE
    warnings.warn(f"{run_dir}: this filesystem cannot flock ({os.strerror(why.errno or 0)}); the run is held by an "
                  f"exclusive lock file, {path.name}, instead (see docs/reliability.md)", RecipeWarning, stacklevel=3)
    for _ in range(3):  # a stale file is removed and the creation tried again; another process may win that race
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _holder_info(path)
            if info and info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
                path.unlink(missing_ok=True)  # its process is gone: a run killed on this host
                continue
            described = _described(info)
            raise CheckpointError(f"{run_dir}: {in_use(described)}. (This filesystem has no flock: if no such "
                                  f"process runs any more, remove {path} and try again)") from None
        os.write(fd, _whoami())
        os.close(fd)
        return RunLock(path, None, fallback=True)
    raise CheckpointError(f"{run_dir}: could not take the lock file {path} (other processes keep taking it)")


def _whoami() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": _dt.datetime.now().isoformat(timespec="seconds")}).encode()


def _holder_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def holder(run_dir: Path) -> str | None:
    """Who is training in `run_dir` now ('pid 123 on host a, since ...'), or None; a stale lock file is nobody."""
    fallback = run_dir / FALLBACK_FILE
    if fallback.exists():
        info = _holder_info(fallback)
        if not (info.get("host") == socket.gethostname() and not _alive(info.get("pid"))):
            return _described(info)
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            return None
        return _describe(fd)
    except OSError as exc:
        if exc.errno in NO_FLOCK:
            return None  # no flock here: the fallback file above is the lock
        raise
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
    return _described(info if isinstance(info, dict) else {})


def _described(info: dict) -> str:
    if "pid" not in info:
        return "a process that has not said who it is yet"
    return f"pid {info['pid']} on host {info.get('host', '?')}, since {info.get('since', '?')}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
