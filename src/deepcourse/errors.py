"""Errors that end a command with exit code 2 and a message instead of a traceback, and the warning for a recipe that
runs but not as written.

A user error is anything the person at the keyboard can fix: a recipe key, a file, a name. Internal bugs stay
ordinary exceptions (exit 1 with a traceback) so they are not mistaken for the user's fault.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class UserError(Exception):
    """A problem in what the user gave us. Each line of `problems` names where it is (key path or file:line)."""

    exit_code = 2

    def __init__(self, message: str | None = None, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        if message is None:
            message = self.problems[0] if len(self.problems) == 1 else f"{len(self.problems)} problems"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # `print(exc)` in a notebook shows every problem, as the command line does
        return self.render()

    def render(self) -> str:
        head = self.message
        if len(self.problems) <= 1 and (not self.problems or self.problems[0] == head):
            return head
        lines = [head + ":"] if not head.endswith(":") else [head]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class RecipeError(UserError):
    """One or more problems in a recipe, each naming its key path."""


class DataError(UserError):
    """A data file is missing, unreadable or malformed; the message names the file (and line when there is one)."""


class MissingSplitError(DataError):
    """A split that was asked for is not in the dataset. `has` lists the splits it does have; a caller that knows
    which key named the split (`eval.split`, `--split`) re-raises it with `named(key)`."""

    def __init__(self, message: str, *, split: str, has: Sequence[str]) -> None:
        super().__init__(message)
        self.split, self.has = split, list(has)

    def named(self, key: str) -> DataError:
        return DataError(f"{key}: {self.message}{did_you_mean(self.split, self.has)}")


class CheckpointError(UserError):
    """A run directory or checkpoint cannot be used (missing, incomplete, unsafe or from another recipe)."""


class DamagedFileError(CheckpointError):
    """A file of a run is missing, cut short or corrupt (a full disk, a copy that stopped half-way), as opposed to
    unsafe: an older checkpoint may do instead."""


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class RecipeWarning(UserWarning):
    """A recipe that runs, but not as written: a key that has no effect, a value the run has to change. Raised with
    `warnings.warn`, so a notebook or an application filters it like any warning (`warnings.simplefilter("ignore",
    RecipeWarning)`); the command line prints it as `deepcourse: warning: ...`."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' Did you mean 'x'?' (or '') using difflib, for unknown names and keys."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)]
    if not close:
        return ""
    # offer several only when they are about as close as the best one ('seeed' -> 'seed', not also 'sweep')
    score = {c: difflib.SequenceMatcher(None, name.lower(), c.lower()).ratio() for c in close}
    close = [c for c in close if score[c] >= score[close[0]] - 0.05]
    if len(close) == 1:
        return f" Did you mean '{close[0]}'?"
    return " Did you mean one of " + ", ".join(f"'{c}'" for c in close) + "?"
