"""Predictions written to a file: `predict -o FILE` and `evaluate --write-predictions FILE`.

Both write under a temporary name renamed into place at the end, so a failure (or nothing to write) leaves no
half-written file. What a row says is the task's (`Task.prediction_rows`): a CSV row per image, the token / gold /
predicted columns conlleval reads for a tagger.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import click

from deepcourse.errors import UserError
from deepcourse.rundir.files import atomic_write
from deepcourse.task import Task


@contextlib.contextmanager
def staged_file(output: Path) -> Iterator[TextIO]:
    """`output` opened for text through `atomic_write`: renamed into place when the block ends without an error; on
    an error `output` is left as it was."""
    with atomic_write(output) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        yield handle


def write_lines(results: Iterable[Any], render: Callable[[Any], str], output: Path | None) -> int:
    """Print each result, or write them to `output` through a temporary file renamed into place at the end, so a
    failure or an empty result leaves no half-written file. Returns how many were written."""
    if output is None:
        return _echo_each(results, render, None)
    with atomic_write(output) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            count = _echo_each(results, render, handle)
        if not count:
            tmp.unlink()  # nothing to write: `output` is left alone
    return count


def _echo_each(results: Iterable[Any], render: Callable[[Any], str], handle: TextIO | None) -> int:
    count = 0
    for result in results:
        click.echo(render(result), file=handle)
        count += 1
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
