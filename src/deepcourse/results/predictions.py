"""Predictions written to a file: `predict -o FILE` and `evaluate --write-predictions FILE`.

Both write under a temporary name renamed into place at the end, so a failure (or nothing to write) leaves no
half-written file. What a row says is the task's (`Task.prediction_rows`): a CSV row per image, the token / gold /
predicted columns conlleval reads for a tagger.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import click

from deepcourse.errors import UserError
from deepcourse.task import Task


def _temporary(output: Path) -> Path:
    return output.with_name(f".{output.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def staged_file(output: Path) -> Iterator[TextIO]:
    """A text file written as `.NAME.tmp-PID` beside `output` and renamed to it when the block ends without an
    error; on an error the temporary file is removed and `output` is left as it was."""
    tmp = _temporary(output)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def write_lines(results: Iterable[Any], render: Callable[[Any], str], output: Path | None) -> int:
    """Print each result, or write them to `output` through a temporary file renamed into place at the end, so a
    failure or an empty result leaves no half-written file. Returns how many were written."""
    tmp = _temporary(output) if output is not None else None
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") if tmp is not None else contextlib.nullcontext() as handle:
            for result in results:
                click.echo(render(result), file=handle)
                count += 1
        if tmp is not None and output is not None and count:
            os.replace(tmp, output)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return count


class RowWriter:
    """The `on_split` and `on_batch` hooks of `evaluate_split` that write the task's prediction rows to `handle`,
    batch by batch in the split's order."""

    def __init__(self, task: Task, handle: TextIO) -> None:
        self.task, self.handle = task, handle
        self.data: Any = None
        self.seen = 0

    def start(self, data: Any) -> None:
        self.data, self.seen = data, 0
        header = self.task.prediction_header()
        if header is not None:
            self.handle.write(header.rstrip("\n") + "\n")

    def batch(self, batch: Any, outputs: dict[str, Any]) -> None:
        for row in self.task.prediction_rows(self.data, self.seen, batch, outputs):
            self.handle.write(row + "\n")
        self.seen += len(next(iter(outputs.values())))


def require_rows(task: Task, name: str) -> None:
    """Refuse `--write-predictions` for a task that does not write prediction rows, before evaluating anything."""
    if type(task).prediction_rows is Task.prediction_rows:
        raise UserError(f"--write-predictions: task '{name}' cannot write its predictions (its plugin does not "
                        f"implement Task.prediction_rows); `deepcourse evaluate` without it prints the metrics")
