"""Run directories: where a run's recipe, metrics, checkpoints and best weights live.

    runs/<recipe name>/<timestamp>/
        recipe.toml      the fully resolved recipe (what `--resume` and `evaluate` rebuild from)
        run.json         versions, plugins, seed, command line, git commit
        metrics.jsonl    one JSON object per logged event: epoch, step, split, metric values
        checkpoints/     the latest N training states, each written atomically
        best/            best weights (safetensors) + facts and artifacts to evaluate/predict without train data
        summary.json     best metrics, wall time, parameter count (written when the run finishes)

`read_run` reads one back for reports, comparisons and results tables: everything they show comes from these files.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from deepcourse._version import __version__
from deepcourse.errors import CheckpointError, UserError
from deepcourse.rundir import lock
from deepcourse.rundir.files import atomic_write_text, read_json, to_json
from deepcourse.rundir.lock import LOCK_FILE

log = logging.getLogger(__name__)
RUN_FILES = ("recipe.toml", "run.json")


def new_run_dir(root: Path, name: str, explicit: Path | None = None) -> tuple[Path, Path | None]:
    """Create a fresh run directory, never an existing one, so nothing is overwritten silently: `explicit`, or
    root/name/<timestamp>, claimed atomically (two runs started in the same second get two folders). Returns it
    and the topmost folder this created (None when `explicit` existed, empty), which is what removing the run
    removes if it fails before its first checkpoint."""
    if explicit is not None:
        if unstarted(require_free(explicit)):
            log.warning(f"--run-dir {explicit}: holds a run that was stopped before its first checkpoint (nothing in "
                        f"it can be resumed); starting anew there")
            _empty(explicit)
        created = _first_missing(explicit)
        explicit.mkdir(parents=True, exist_ok=True)
        return explicit, created
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / name / stamp
    candidate, i = base, 1
    while True:
        created = _first_missing(candidate)
        try:
            candidate.mkdir(parents=True)
            return candidate, created
        except FileExistsError:
            candidate = base.with_name(f"{stamp}-{i}")
            i += 1


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of `path` that does not exist yet (None when `path` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def require_free(explicit: Path) -> Path:
    """An explicit --run-dir is a folder that does not exist yet, is empty, or holds only what a run stopped before
    its first checkpoint left (`unstarted`): a run never writes over another's, and a stop while a run was starting
    is never a dead end (nothing to resume there, so the same --run-dir starts it again)."""
    if explicit.exists() and not explicit.is_dir():
        raise UserError(f"--run-dir {explicit}: is a file, not a folder; choose a folder for the run")
    if not explicit.is_dir() or not any(explicit.iterdir()):
        return explicit
    if unstarted(explicit):
        holder = lock.holder(explicit)
        if holder:
            raise CheckpointError(f"--run-dir {explicit}: {lock.in_use(holder)}")
        return explicit
    if is_run_dir(explicit):
        raise UserError(f"--run-dir {explicit}: already exists and is not empty: it holds a run; continue that run "
                        f"with --resume {explicit}, or choose another folder")
    raise UserError(f"--run-dir {explicit}: already exists and is not empty; choose another folder")


#: what a run writes before its first checkpoint (besides temporary files, `.NAME.tmp-PID`)
STARTUP_FILES = frozenset({"recipe.toml", "run.json", "artifacts.json", "metrics.jsonl", "trackers.json", "trackers",
                           "checkpoints", LOCK_FILE})


def unstarted(path: Path) -> bool:
    """Whether `path` holds a run stopped before its first checkpoint (a SIGKILL, a power cut, a version that left
    its folder on a stop while starting): only what a run writes before then, no complete checkpoint (a checkpoint
    folder cut mid-write is `.tmp-*`), no best weights. Nothing in it can be resumed or evaluated."""
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    if not names or any(name not in STARTUP_FILES and not _temporary(name) for name in names):
        return False
    checkpoints = path / "checkpoints"
    return not checkpoints.exists() or (checkpoints.is_dir() and all(p.name.startswith(".tmp-")
                                                                       for p in checkpoints.iterdir()))


def _temporary(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name  # an atomic write cut short (rundir.files.atomic_write)


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() and not child.is_symlink() else child.unlink()


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "recipe.toml").is_file()


def require_run_dir(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory")
    if not is_run_dir(path):
        raise CheckpointError(f"{path}: not a deepcourse run directory (it has no recipe.toml); "
                              f"run directories look like runs/<recipe>/<timestamp>/")
    return path


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_info(seed: int, plugins_info: list[dict[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    import accelerate
    import torch

    return {
        "deepcourse": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
        "command": sys.argv,
        "cwd": os.getcwd(),
        "git_commit": git_commit(Path.cwd()),
        "seed": seed,
        "plugins": plugins_info,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        **extra,
    }


def remove_unstarted(path: Path, created: Path | None) -> None:
    """Remove a run that failed before its first checkpoint (diverged, crashed, aborted): nothing of it can be
    resumed or evaluated. `created` is the topmost folder the run created (`new_run_dir`), removed with it; a folder
    that existed before is emptied, not removed."""
    if not path.exists() or any((path / "checkpoints").glob("step-*")) or (path / "best").exists():
        return
    if created is None:
        _empty(path)
        return
    shutil.rmtree(path, ignore_errors=True)
    for parent in path.parents:  # the folders created above it, while nothing else lives in them
        if parent == created.parent:
            break
        try:
            parent.rmdir()
        except OSError:
            break


class MetricsLog:
    """Appends one JSON object per event to metrics.jsonl, flushed at once so a crash loses nothing logged."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: TextIO | None = open(path, "a", encoding="utf-8") if path else None

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(to_json(record, indent=None) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The logged events, in order. A line that is not a JSON object (cut by a crash, edited by hand) is skipped
    with a warning naming it, and the lines after it are still read."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row, problem = None, f"not valid JSON ({exc.msg} at column {exc.colno})"
        else:
            problem = "" if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"
        if problem:
            log.warning("%s:%d: %s; skipped: %r", path, number, problem, line.strip()[:60])
            continue
        rows.append(row)
    return rows


def truncate_metrics(path: Path, last_step: int, last_event: int) -> None:
    """On resume, forget events logged after the checkpoint so the log reads as one uninterrupted run."""
    rows = [r for r in read_metrics(path) if r.get("event", 0) <= last_event and r.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(to_json(r, indent=None) + "\n" for r in rows))


# -- reading a run back -------------------------------------------------------------------------------------------
NOT_METRICS = {"event", "epoch", "step", "split", "scope", "seconds", "num_samples"}


@dataclass
class RunData:
    """A run directory's recipe, logged events, summary and run.json, as reports and comparisons read them."""

    path: Path
    recipe: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return self.recipe.get("name", self.path.name)

    @property
    def eval_split(self) -> str:
        return self.recipe.get("eval", {}).get("split", "validation")

    def epoch_series(self, split: str, key: str) -> tuple[list[int], list[float]]:
        points = [(r["epoch"], r[key]) for r in self.rows
                  if r.get("split") == split and r.get("scope", "epoch") == "epoch" and key in r]
        return [p[0] for p in points], [p[1] for p in points]

    def step_series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in self.rows
                  if r.get("split") == "train" and r.get("scope") == "step" and key in r]
        return [p[0] for p in points], [p[1] for p in points]

    def eval_metrics(self) -> list[str]:
        names: list[str] = []
        for r in self.rows:
            if r.get("split") == self.eval_split:
                names += [k for k, v in r.items() if k not in NOT_METRICS and isinstance(v, (int, float))
                          and k not in names]
        return names

    def final(self) -> dict[str, float]:
        rows = [r for r in self.rows if r.get("split") == self.eval_split]
        return {k: v for k, v in rows[-1].items() if k not in NOT_METRICS} if rows else {}


def read_run(run_dir: Path) -> RunData:
    require_run_dir(run_dir)
    recipe = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    return RunData(run_dir, recipe, read_metrics(run_dir / "metrics.jsonl"),
                   read_json(run_dir / "summary.json", missing={}), read_json(run_dir / "run.json", missing={}))
