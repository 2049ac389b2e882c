"""Where a command will write, checked before it reads any data or builds a model.

A run that can only fail when it saves, after minutes of loading, or a traceback from `mkdir`, is the wrong answer to
a mistyped option. So the command line checks every output location first (`--run-dir`, `--runs-root`, `-o`,
`--dir`): a folder must be creatable where it is named (no file in the way, a parent this process may write in), and a
file must not name a folder. What a command writes goes through temporary names
(`deepcourse.rundir.files.atomic_write`), so a failure leaves no half-written output.

No output location lies over a run's own files (`inside_run`): `evaluate --write-predictions RUN/recipe.toml` would
replace the recipe the run is rebuilt from. Inside a run directory a command may create a new file, or write into a
folder the run does not own (`explain`'s RUN/explain); the run's files, the folders it owns and the run folder itself
are refused, and so is an existing file there (whose it is cannot be known: it is not replaced).
"""
from __future__ import annotations

import os
from pathlib import Path

from deepcourse.errors import UserError

#: the names a run directory holds (deepcourse.rundir.layout, training.checkpoint, the trackers, the report and its
#: model card README.md, `deepcourse export`'s default folder), besides
#: every dot-name (its lock, temporary and replaced folders); `tests/test_output_contract.py` keeps it complete
RUN_OWNED = frozenset({"recipe.toml", "run.json", "metrics.jsonl", "summary.json", "artifacts.json", "holdout.json",
                       "checkpoints", "best", "report", "trackers", "README.md", "export"})
#: what marks a folder as a run: its recipe, and what training writes beside it from the start
RUN_MARKS = ("run.json", "metrics.jsonl", "checkpoints", "best")


def writable_folder(path: Path, option: str, *, resumed: bool = False) -> Path:
    """`path` is a folder this process can create files in, or one it can create, and not a run's own (unless it is
    the run a command continues: `resumed`); returns it unchanged."""
    if not resumed:
        inside_run(path, option, folder=True)
    existing = nearest_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == path.absolute() else f"is under '{_shown(existing, path)}', a file"
        raise UserError(f"{option} {path}: {where}, not a folder; choose a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        target = "cannot write in it" if existing == path.absolute() else \
            f"cannot create it: '{_shown(existing, path)}' is read-only for this user"
        raise UserError(f"{option} {path}: {target}; choose a folder you can write in")
    return path


def writable_file(path: Path, option: str) -> Path:
    """`path` names a file (not a folder) that can be created or replaced, and not a run's own; returns it
    unchanged."""
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name, e.g. {path / 'predictions.txt'}")
    inside_run(path, option, folder=False)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path}: the file is read-only for this user")
    parent = path.absolute().parent
    existing = nearest_existing(parent)
    if not existing.is_dir():
        raise UserError(f"{option} {path}: is under '{_shown(existing, path)}', a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot create it: '{_shown(existing, path)}' is read-only for this user")
    return path


def inside_run(path: Path, option: str, *, folder: bool) -> None:
    """Refuse an output location that would write over a run's files: the run folder itself (as a folder output),
    a name the run owns or anything under one, or (as a file output) a file that already exists inside a run."""
    real = _real(path.absolute().parent) / path.name if not folder else _real(path.absolute())
    run = next((p for p in (real, *real.parents) if is_run(p)), None)
    if run is None:
        return
    within = real.relative_to(run).parts
    shown = _as_given(run, path, len(within))
    advice = "choose a new folder inside the run or one outside it" if folder else \
        f"write to a new file (e.g. {shown / 'predictions.txt'}) or outside the run"
    if not within:
        raise UserError(f"{option} {path}: is the run directory {shown} itself; a run's files are never written "
                        f"over: {advice}")
    if within[0] in RUN_OWNED or within[0].startswith("."):
        what = f"run {shown}'s own {within[0]}" if len(within) == 1 else \
            f"inside {shown / within[0]}, run {shown}'s own"
        raise UserError(f"{option} {path}: is {what}; a run's files are never written over: {advice}")
    if not folder and (path.exists() or path.is_symlink()):
        raise UserError(f"{option} {path}: already exists inside run {shown}, and a file in a run is never "
                        f"replaced: {advice}")


def _as_given(run: Path, given: Path, depth: int) -> Path:
    """The run folder as the user wrote it: `given` less its last `depth` parts, when that is the run."""
    stem = given
    for _ in range(depth):
        stem = stem.parent
    for shown in (Path(os.path.normpath(stem)), stem):  # 'runs/x/best/..' reads as 'runs/x' where that is the run
        if _real(shown.absolute()) == run:
            return shown
    return run


def is_run(folder: Path) -> bool:
    """A run directory: its recipe.toml and something training writes beside it (a folder that merely holds a recipe
    is a project folder, not a run)."""
    return (folder / "recipe.toml").is_file() and any((folder / mark).exists() for mark in RUN_MARKS)


def _real(path: Path) -> Path:
    """`path` with the symbolic links of its existing part resolved (the folder something would really go in)."""
    existing = nearest_existing(path)
    return existing.resolve() / path.relative_to(existing)


def nearest_existing(path: Path) -> Path:
    """`path` if it exists, else its nearest parent that does (where a check or a temporary folder can look)."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _shown(found: Path, given: Path) -> str:
    """`found` as the user would recognise it: relative when `given` was."""
    if given.is_absolute():
        return str(found)
    for cwd in (Path.cwd(), Path.cwd().resolve()):
        if found.is_relative_to(cwd):
            return str(found.relative_to(cwd))
    return str(found)
