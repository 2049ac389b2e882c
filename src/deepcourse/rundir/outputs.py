"""Where a command will write, checked before it reads any data or builds a model.

A run that can only fail when it saves, after minutes of loading, or a traceback from `mkdir`, is the wrong answer to
a mistyped option. So the command line checks every output location first (`--run-dir`, `--runs-root`, `-o`,
`--dir`): a folder must be creatable where it is named (no file in the way, a parent this process may write in), and a
file must not name a folder. What a command writes goes through temporary names
(`deepcourse.rundir.files.atomic_write`), so a failure leaves no half-written output.
"""
from __future__ import annotations

import os
from pathlib import Path

from deepcourse.errors import UserError


def writable_folder(path: Path, option: str) -> Path:
    """`path` is a folder this process can create files in, or one it can create; returns it unchanged."""
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
    """`path` names a file (not a folder) that can be created or replaced; returns it unchanged."""
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name, e.g. {path / 'predictions.txt'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path}: the file is read-only for this user")
    parent = path.absolute().parent
    existing = nearest_existing(parent)
    if not existing.is_dir():
        raise UserError(f"{option} {path}: is under '{_shown(existing, path)}', a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot create it: '{_shown(existing, path)}' is read-only for this user")
    return path


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
    try:
        return str(found.relative_to(Path.cwd()))
    except ValueError:
        return str(found)
