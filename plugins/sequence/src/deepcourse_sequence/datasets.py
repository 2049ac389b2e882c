"""CoNLL datasets a recipe can name in `[data]`: `conll2003` (local copy or the Hub) and `conll` (your files).

A dataset builder only describes the corpus (where the files are, their columns and tag scheme, how to build the
vocabulary); the task calls `Corpus.load` for the splits it needs. Local copies win over the Hub, as everywhere in
deepcourse: `data.data_dir` when it is set (and only it), else `$DEEPCOURSE_DATA/<name>/`, then the Hub id.
"""
from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from deepcourse.api import (
    DATA_ENV,
    DATASETS,
    DataError,
    MissingSplitError,
    Unique,
    load_hf_splits,
    locate_splits,
    present_splits,
)

from .conll import document_starts, quiet_datasets, read_conll
from .schemes import Scheme
from .vocab import VocabOptions

#: the task the CoNLL datasets feed (a recipe binding them to another task fails at `deepcourse check`)
TASK = "sequence-tagging"

#: file names tried for each split in a data folder, in order
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.txt", "train.conll", "train.bio", "eng.train"),
    "validation": ("dev.txt", "valid.txt", "validation.txt", "dev.conll", "valid.conll", "eng.testa"),
    "test": ("test.txt", "test.conll", "eng.testb"),
}


DEFAULT_VOCAB = VocabOptions()  # immutable (a frozen pydantic model): safe as a shared default


@dataclass(frozen=True)
class LoadedSplit:
    """Sentences of one split (a `datasets.Dataset` of string columns plus `line`) and where they came from."""

    dataset: Any
    source: str  # a file path, or a description of the Hub copy (then `line` is -1)

    def where(self, sentence: int, token: int = 0) -> str:
        """'file:line' of a token, for error messages."""
        line = self.dataset[sentence]["line"]
        if line is None or line < 0:
            return f"{self.source}, sentence {sentence + 1}, token {token + 1}"
        return f"{self.source}:{line + token}"

    def __len__(self) -> int:
        return len(self.dataset)

    def subset(self, indices: Any) -> LoadedSplit:
        """Some of the sentences (validation carved from train), still pointing at their lines in the file."""
        return LoadedSplit(self.dataset.select(indices.tolist()), self.source)

    def groups(self) -> list[int] | None:
        """The document of each sentence (the `-DOCSTART-` lines before it), so `data.holdout` keeps whole news
        stories out; None for a copy without lines (the Hub's), which is then held out by a fixed random draw."""
        lines = self.dataset["line"]
        if not lines or min(lines) < 0 or not Path(self.source).is_file():
            return None
        starts = document_starts(Path(self.source))
        return [bisect.bisect(starts, line) for line in lines]


@dataclass(frozen=True)
class Corpus:
    """What a CoNLL `[data]` table describes; subclasses implement `load`."""

    name: str
    columns: tuple[str, ...]
    scheme: Scheme
    strict: bool
    vocab: VocabOptions
    embeddings: str | None
    data_dir: str | None

    def load(self, splits: Sequence[str]) -> dict[str, LoadedSplit]:
        """The requested splits that exist; a DataError listing every place tried when none does."""
        raise NotImplementedError

    def available(self) -> list[str]:
        """Every split the corpus has here, loaded or not (for the message naming a missing one)."""
        raise NotImplementedError

    def embeddings_file(self) -> Path | None:
        return resolve_path(self.embeddings, self.data_dir, "data.embeddings") if self.embeddings else None


def resolve_path(path: str, data_dir: str | None, key: str) -> Path:
    """A user-given file: absolute, or relative to the current folder, data.data_dir or $DEEPCOURSE_DATA."""
    given = Path(os.path.expandvars(path)).expanduser()
    if given.is_absolute():
        candidates = [given]
    else:
        candidates = [Path.cwd() / given] + ([Path(data_dir).expanduser() / given] if data_dir else [])
        if os.environ.get(DATA_ENV):
            candidates.append(Path(os.environ[DATA_ENV]).expanduser() / given)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    env = "" if os.environ.get(DATA_ENV) else f" (${DATA_ENV} is not set)"
    raise DataError(f"{key}: file '{path}' not found; tried " + ", ".join(str(c) for c in candidates) + env)


#: CoNLL-2003 on the Hub: eriktks/conll2003 is a loading script, which datasets >= 4 refuses to run; its
#: refs/convert/parquet branch is the Hub's own parquet export of the same data (data files only).
HUB_ID, HUB_REVISION = "eriktks/conll2003", "refs/convert/parquet"


@dataclass(frozen=True)
class Conll2003(Corpus):
    hub_id: str = HUB_ID
    hub_revision: str | None = HUB_REVISION
    #: recipe column -> column of the Hub copy (whose tags are class ids)
    hub_columns: Mapping[str, str] = field(default_factory=lambda: {
        "token": "tokens", "pos": "pos_tags", "chunk": "chunk_tags", "ner": "ner_tags"})

    def load(self, splits: Sequence[str]) -> dict[str, LoadedSplit]:
        found, _ = locate_splits(self.name, self.data_dir, SPLIT_FILES, splits)
        if found:
            return {s: LoadedSplit(read_conll(files[0], self.columns), str(files[0])) for s, files in found.items()}
        unknown = [c for c in self.columns if c not in self.hub_columns]
        hub_id = None if unknown else self.hub_id
        loaded = load_hf_splits(self.name, data_dir=self.data_dir, patterns=SPLIT_FILES, splits=splits,
                                hub_id=hub_id, revision=self.hub_revision)
        return {s: LoadedSplit(self._from_hub(ds), f"{self.hub_id} ({s} split from the Hub)")
                for s, ds in loaded.items()}

    def available(self) -> list[str]:
        return present_splits(self.name, self.data_dir, SPLIT_FILES)[1] or list(SPLIT_FILES)

    def _from_hub(self, ds: Any) -> Any:
        """Hub columns (class ids) -> the recipe's columns (strings), like a local file would give."""
        def to_strings(batch: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {}
            for col in self.columns:
                values = batch[self.hub_columns[col]]
                names = getattr(ds.features[self.hub_columns[col]], "feature", None)
                names = getattr(names, "names", None)
                out[col] = [[names[v] for v in seq] for seq in values] if names else values
            out["line"] = [-1] * len(next(iter(batch.values())))
            return out

        with quiet_datasets():
            return ds.map(to_strings, batched=True, remove_columns=list(ds.column_names))


@dataclass(frozen=True)
class ConllFiles(Corpus):
    files: Mapping[str, str] = field(default_factory=dict)

    def available(self) -> list[str]:
        folder = Path(self.data_dir).expanduser() if self.data_dir else None
        found = [s for s, names in SPLIT_FILES.items() if folder is not None and any((folder / n).is_file()
                                                                                     for n in names)]
        return list(dict.fromkeys([*self.files, *found]))

    def load(self, splits: Sequence[str]) -> dict[str, LoadedSplit]:
        out: dict[str, LoadedSplit] = {}
        tried: list[str] = []
        folder = Path(self.data_dir).expanduser() if self.data_dir else None
        unknown = [s for s in splits if s not in self.files and s not in SPLIT_FILES]
        if unknown:
            has = self.available()
            raise MissingSplitError(f"{self.name} has no split '{unknown[0]}' (it has: {', '.join(has) or 'none'}; "
                                    f"data.files names a file for each split).", split=unknown[0], has=has)
        for split in splits:
            if split in self.files:  # an explicit name must exist: no silent fall-back to another file
                given = Path(os.path.expandvars(self.files[split])).expanduser()
                path = given if given.is_absolute() or folder is None else folder / given
                if not path.is_file():
                    raise DataError(f"data.files.{split}: '{self.files[split]}' not found (looked for {path})")
                out[split] = LoadedSplit(read_conll(path, self.columns), str(path))
                continue
            candidates = [folder / name for name in SPLIT_FILES.get(split, ())] if folder is not None else []
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is not None:
                out[split] = LoadedSplit(read_conll(hit, self.columns), str(hit))
            else:
                tried += [f"{split}: {c}" for c in candidates] or [f"{split}: not in data.files"]
        if not out and splits:
            raise DataError("no CoNLL file found for " + ", ".join(splits) + ". Tried " + "; ".join(tried) +
                            ". Set data.files = {train = \"...\", validation = \"...\"} (relative to data.data_dir "
                            "when it is set)")
        return out


@DATASETS.register("conll2003", task=TASK)
def conll2003(
    data_dir: str | None = None,
    columns: Annotated[tuple[str, ...], Unique] = ("token", "pos", "chunk", "ner"),
    scheme: Scheme = "BIO",
    strict: bool = False,
    vocab: VocabOptions = DEFAULT_VOCAB,
    embeddings: str | None = None,
    hub_id: str = HUB_ID,
    hub_revision: str | None = None,
) -> Corpus:
    """CoNLL-2003 English NER (POS, chunk and NER columns): local train.txt/dev.txt/test.txt, else the Hub's parquet
    export of eriktks/conll2003.

    scheme: the tag scheme of the files (BIO for the usual copies); strict: fail on a tag sequence it forbids
    instead of repairing it as conlleval does; embeddings: a GloVe-format text file (.gz allowed), found relative
    to the current folder, data.data_dir or $DEEPCOURSE_DATA; hub_revision: the Hub revision to load (default: the
    one pinned for the default hub_id; another hub_id needs its own).
    """
    revision = hub_revision or (HUB_REVISION if hub_id == HUB_ID else None)
    return Conll2003("conll2003", tuple(columns), scheme, strict, vocab, embeddings, data_dir, hub_id, revision)


@DATASETS.register("conll", task=TASK)
def conll(
    files: dict[str, str] | None = None,
    data_dir: str | None = None,
    columns: Annotated[tuple[str, ...], Unique] = ("token", "ner"),
    scheme: Scheme = "BIO",
    strict: bool = False,
    vocab: VocabOptions = DEFAULT_VOCAB,
    embeddings: str | None = None,
) -> Corpus:
    """Your own CoNLL files: files = {train = "...", validation = "...", test = "..."} and their columns.

    Relative file names are read from data.data_dir when it is set (else the current folder). A split missing
    from `files` is looked up in data.data_dir under the usual names (train.txt, dev.txt, test.txt...), which is
    how `evaluate --split test --data-dir DIR` finds a test set.
    """
    return ConllFiles("conll", tuple(columns), scheme, strict, vocab, embeddings, data_dir, dict(files or {}))
