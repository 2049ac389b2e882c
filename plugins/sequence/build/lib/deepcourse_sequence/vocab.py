"""Vocabularies (words, characters, tags) and pretrained word vectors.

Vocabularies are fitted on the training split only and saved with the run (as JSON artifacts), so `evaluate` and
`predict` index text exactly as training did without reading the training data again.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from deepcourse.api import DataError

PAD, UNK = "<pad>", "<unk>"
_DIGITS = re.compile(r"\d")


class VocabOptions(BaseModel):
    """How words become vocabulary keys: the `[data.vocab]` table."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    #: words seen fewer times in train become <unk> (1 keeps every training word)
    min_freq: Annotated[int, Field(ge=1)] = 1
    #: key words in lower case (case information then comes from the character features)
    lowercase: bool = False
    #: replace every digit by 0, so "1996" and "1997" share one entry
    normalize_digits: bool = False
    #: also add every word of the pretrained vectors file, so dev/test words unseen in train keep their vector
    #: (reasonable for GloVe files restricted to a corpus; the full 400k GloVe makes a large embedding table)
    add_pretrained: bool = False

    def key(self, word: str) -> str:
        if self.lowercase:
            word = word.lower()
        if self.normalize_digits:
            word = _DIGITS.sub("0", word)
        return word


class Vocabulary:
    """A string <-> id table. With an unknown token, unseen strings map to it; without one they are errors."""

    def __init__(self, tokens: Iterable[str], *, specials: Sequence[str] = (PAD, UNK), unk: str | None = UNK) -> None:
        self.itos: list[str] = list(dict.fromkeys([*specials, *tokens]))
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        self.specials = tuple(specials)
        if unk is not None and unk not in self.stoi:
            raise ValueError(f"unknown token {unk!r} must be one of the specials {specials}")
        self.unk = unk
        self.unk_index = self.stoi[unk] if unk is not None else -1

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], *, min_freq: int = 1, specials: Sequence[str] = (PAD, UNK),
                    unk: str | None = UNK) -> Vocabulary:
        """Most frequent first (ties alphabetically), so ids are reproducible."""
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(kept, specials=specials, unk=unk)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and (self.itos, self.unk) == (other.itos, other.unk)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} entries, unk={self.unk!r})"

    def index(self, token: str) -> int:
        found = self.stoi.get(token)
        if found is not None:
            return found
        if self.unk is None:
            raise KeyError(token)
        return self.unk_index

    def indices(self, tokens: Iterable[str]) -> list[int]:
        get, unk = self.stoi.get, self.unk_index
        if self.unk is None:
            return [self.stoi[t] for t in tokens]
        return [get(t, unk) for t in tokens]

    def extend(self, tokens: Iterable[str]) -> Vocabulary:
        """A copy with `tokens` appended (ids of existing entries unchanged)."""
        return Vocabulary([*self.itos[len(self.specials):], *tokens], specials=self.specials, unk=self.unk)

    # -- persistence ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.itos[len(self.specials):], "specials": list(self.specials), "unk": self.unk}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        return cls(data["tokens"], specials=data.get("specials", ()), unk=data.get("unk"))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a saved vocabulary ({exc})") from None


def word_lookup(vocab: Vocabulary, options: VocabOptions, words: Iterable[str]) -> list[int]:
    """Ids of words: the normalised key, else its lower-cased form (pretrained vectors are often lower case)."""
    stoi, unk = vocab.stoi, vocab.unk_index
    out = []
    for word in words:
        key = options.key(word)
        found = stoi.get(key)
        if found is None:
            found = stoi.get(key.lower(), unk)
        out.append(found)
    return out


def char_counts(words: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for word in words:
        counts.update(word)
    return counts


# -- pretrained vectors -------------------------------------------------------------------------------------------
def read_vectors(path: Path, wanted: Callable[[str], bool] | None = None) -> tuple[dict[str, list[float]], int]:
    """Vectors of a GloVe-format text file (`word v1 ... vD`, optional word2vec header line, .gz allowed).

    With `wanted`, only the lines whose word it accepts are parsed (parsing floats dominates the cost).
    Returns (word -> vector, dimension).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    vectors: dict[str, list[float]] = {}
    dim = 0
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                word, _, rest = line.rstrip("\n").rstrip(" ").partition(" ")
                if lineno == 1 and rest.count(" ") == 0 and word.isdigit():
                    continue  # word2vec-style "count dim" header
                if not rest:
                    if not line.strip():
                        continue
                    raise DataError(f"{path}:{lineno}: expected a word followed by its vector values")
                if word in vectors or (wanted is not None and not wanted(word)):
                    continue
                try:
                    values = [float(v) for v in rest.split(" ")]
                except ValueError:
                    raise DataError(f"{path}:{lineno}: vector values must be numbers "
                                    f"(read {rest.split(' ')[0]!r}...)") from None
                if dim and len(values) != dim:
                    raise DataError(f"{path}:{lineno}: vector of {len(values)} values, earlier ones have {dim}")
                dim = len(values)
                vectors[word] = values
    except FileNotFoundError:
        raise DataError(f"{path}: embeddings file not found") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read embeddings: {exc}") from None
    if not vectors and wanted is None:
        raise DataError(f"{path}: no vectors in this file")
    return vectors, dim


def embedding_matrix(vocab: Vocabulary, vectors: Mapping[str, Sequence[float]], dim: int, *,
                     seed: int = 0) -> tuple[torch.Tensor, int]:
    """Rows of `vocab` from `vectors` (exact key, then lower-cased); the others uniform in +-sqrt(3/dim), the
    range NCRF++ and Lample et al. use, and padding zero. Returns (matrix, rows found)."""
    g = torch.Generator().manual_seed(seed)
    scale = math.sqrt(3.0 / dim)
    matrix = torch.empty(len(vocab), dim).uniform_(-scale, scale, generator=g)
    matrix[0] = 0.0
    found = 0
    for i, word in enumerate(vocab.itos):
        vec = vectors.get(word)
        if vec is None:
            vec = vectors.get(word.lower())
        if vec is not None:
            matrix[i] = torch.tensor(vec)
            found += 1
    return matrix, found

