"""Reading and writing CoNLL column files.

One token per line, columns separated by ASCII spaces or tabs (named by the recipe: `columns = ["token", "pos", "chunk",
"ner"]`), sentences separated by blank or whitespace-only lines (some real files use a line holding a lone tab),
`-DOCSTART-` document lines skipped. A malformed line fails with file:line, never with a traceback.

`read_conll` returns a Hugging Face `datasets.Dataset` with one list-of-strings column per named column plus
`line` (the file line of each sentence's first token, so later checks can still name file:line). It is cached as
Arrow, keyed by the file's path, size and modification time, so a second run does not parse the text again.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deepcourse.api import DataError

DOCSTART = "-DOCSTART-"
# Columns are separated by ASCII spaces and tabs only: str.split() would also cut a token at a non-breaking or
# other Unicode space ("10\u00a0000", "New\u00a0York"), which is part of the token in real corpora.
_ASCII_SPACE = " \t\r\n\f\v"
_SEPARATOR = re.compile(f"[{_ASCII_SPACE}]+")


def split_columns(line: str) -> list[str]:
    """The columns of one line; [] for a blank (or whitespace-only) line."""
    stripped = line.strip(_ASCII_SPACE)
    return _SEPARATOR.split(stripped) if stripped else []


def iter_sentences(path: str | os.PathLike,
                   columns: Sequence[str] | None) -> Iterator[tuple[int, dict[str, list[str]]]]:
    """Yield (line of the first token, {column: values}) per sentence.

    With `columns=None` (tagging a file at predict time) any number of columns is accepted and only the first,
    the token, is kept.
    """
    path = Path(path)
    names = list(columns) if columns is not None else ["token"]
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a CoNLL file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    current: list[list[str]] = []
    first_line = 0
    with handle:
        for lineno, raw in enumerate(handle, 1):
            try:  # decoded line by line, so an encoding error names its line
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start + 1} of the "
                                f"line); convert the file, e.g. iconv -f latin1 -t utf-8") from None
            fields = split_columns(line)
            if not fields or fields[0] == DOCSTART:
                if current:
                    yield first_line, _columns(names, current)
                    current = []
                continue
            if columns is None:
                fields = fields[:1]
            elif len(fields) != len(names):
                raise DataError(
                    f"{path}:{lineno}: expected {len(names)} columns ({' '.join(names)}), found {len(fields)}: "
                    f"{line.strip()[:80]!r}. Set data.columns to the columns of your files")
            if not current:
                first_line = lineno
            current.append(fields)
    if current:  # no blank line after the last sentence
        yield first_line, _columns(names, current)


def document_starts(path: Path) -> list[int]:
    """Line numbers of the `-DOCSTART-` lines of a CoNLL file, in order (one document per line, CoNLL-2003 style)."""
    with open(path, "rb") as handle:
        return [n for n, raw in enumerate(handle, 1) if raw.startswith(DOCSTART.encode())]


def _columns(names: list[str], rows: list[list[str]]) -> dict[str, list[str]]:
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _generate(path: str, columns: tuple[str, ...], stamp: tuple[int, int]) -> Iterator[dict[str, Any]]:
    del stamp  # part of the cache key only
    for line, sentence in iter_sentences(path, columns):
        yield {**sentence, "line": line}


def read_conll(path: str | os.PathLike, columns: Sequence[str], *, cache: bool = True) -> Any:
    """A CoNLL file as a `datasets.Dataset` (columns as lists of strings, plus `line`)."""
    import datasets

    path = Path(path).expanduser().resolve()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a CoNLL file")
    features = datasets.Features({**{c: datasets.Sequence(datasets.Value("string")) for c in columns},
                                  "line": datasets.Value("int64")})
    if not cache:
        rows = list(_generate(str(path), tuple(columns), (0, 0)))
        return datasets.Dataset.from_list(rows, features=features) if rows else _empty(features)
    with quiet_datasets():
        try:
            return datasets.Dataset.from_generator(
                _generate, features=features,
                gen_kwargs={"path": str(path), "columns": tuple(columns), "stamp": (stat.st_size, stat.st_mtime_ns)})
        except Exception as exc:  # datasets wraps generator errors; surface ours unchanged
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, DataError):
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                raise cause from None
            if _is_empty(path, columns):
                return _empty(features)
            raise


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars for the small, cached steps of loading a corpus."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _is_empty(path: Path, columns: Sequence[str]) -> bool:
    return next(iter_sentences(path, columns), None) is None


def _empty(features: Any) -> Any:
    import datasets

    return datasets.Dataset.from_dict({name: [] for name in features}, features=features)


def format_sentence(columns: Sequence[Sequence[str]]) -> str:
    """One sentence as CoNLL lines: the i-th line holds the i-th value of every column, space-separated."""
    return "\n".join(" ".join(values) for values in zip(*columns, strict=True))
