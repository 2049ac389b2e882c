"""Sentences as padded tensors, batched with a handful of tensor operations.

Everything per token (vocabulary lookups, character ids) happens once, when a split is set up. A batch is then
cut out of the padded tensors by `__getitems__` (the DataLoader passes it the batch's indices), so the training
loop never runs Python per token. Characters are stored once per distinct word form and each batch carries only
its own distinct forms, so the character encoder runs once per form, not once per token.

The token strings themselves are kept as given (`tokens`, a reference, never read by `__getitems__`) so that error
analysis (`deepcourse report`) can show the sentences it scored without reading the files again.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .vocab import VocabOptions, Vocabulary, word_lookup

IGNORE = -100  # tag id of padding positions (what cross-entropy ignores and the engine pads with)


#: word shapes (Reimers & Gurevych 2017): the capitalisation lower-cased word vectors lose, as ids 1..7 (0: padding)
CASINGS = ("padding", "other", "numeric", "mainly_numeric", "all_lower", "all_upper", "initial_upper",
           "contains_digit")


def casing(token: str) -> int:
    """The id in CASINGS of a token's shape."""
    digits = sum(c.isdigit() for c in token)
    if token.isdigit():
        return 2
    if digits / max(len(token), 1) > 0.5:
        return 3
    if token.islower():
        return 4
    if token.isupper():
        return 5
    if token[:1].isupper():
        return 6
    return 7 if digits else 1


def _scatter(values: Sequence[int], lengths: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """Row-major flat values -> a [len(lengths), width] tensor, rows filled up to their length."""
    out = torch.full((len(lengths), max(width, 1)), fill, dtype=torch.long)
    mask = torch.arange(out.shape[1]) < lengths.unsqueeze(1)
    out[mask] = torch.as_tensor(values, dtype=torch.long)
    return out


class TaggedSentences(Dataset):
    """Padded word ids, per-position word-form ids, a form -> characters table, and tag ids per label; `tokens`
    are the sentences as strings, for reports."""

    def __init__(self, tokens: Sequence[Sequence[str]], *, words: Vocabulary, word_options: VocabOptions,
                 chars: Vocabulary, tags: Mapping[str, Sequence[Sequence[int]]] | None = None) -> None:
        self.tokens = tokens
        self.lengths = torch.tensor([len(s) for s in tokens], dtype=torch.long)
        width = int(self.lengths.max()) if len(tokens) else 1
        flat = [tok for sentence in tokens for tok in sentence]
        self.words = _scatter(word_lookup(words, word_options, flat), self.lengths, width, 0)
        self.casing = _scatter([casing(tok) for tok in flat], self.lengths, width, 0)
        forms: dict[str, int] = {}
        self.forms = _scatter([forms.setdefault(tok, len(forms)) for tok in flat], self.lengths, width, -1)
        self.form_lengths = torch.tensor([len(f) for f in forms], dtype=torch.long)
        max_chars = int(self.form_lengths.max()) if forms else 1
        self.form_chars = _scatter(chars.indices("".join(forms)), self.form_lengths, max_chars, 0)
        self.tags = {name: _scatter([t for s in seqs for t in s], self.lengths, width, IGNORE)
                     for name, seqs in (tags or {}).items()}

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, indices: torch.Tensor) -> TaggedSentences:
        """Some of the sentences, in the given order (`data.train_samples`, `data.eval_samples`), sharing the
        word-form table; a batch of them is the batch the same sentences make here."""
        part = object.__new__(TaggedSentences)
        part.tokens = [self.tokens[i] for i in indices.tolist()]
        part.lengths = self.lengths[indices]
        part.words, part.forms, part.casing = self.words[indices], self.forms[indices], self.casing[indices]
        part.form_lengths, part.form_chars = self.form_lengths, self.form_chars
        part.tags = {name: tags[indices] for name, tags in self.tags.items()}
        return part

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """One batch: words/forms/tags cut to the longest sentence, the batch's distinct forms as characters.

        char_index[b, t] points into `chars` (one row per distinct form); padding positions point one past the
        end, where the model puts a zero vector.
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[idx]
        width = int(lengths.max())
        forms = self.forms[idx, :width]
        real = forms >= 0
        distinct, inverse = torch.unique(forms[real], return_inverse=True)
        char_index = torch.full_like(forms, len(distinct))
        char_index[real] = inverse
        char_lengths = self.form_lengths[distinct]
        batch: dict[str, Any] = {
            "words": self.words[idx, :width],
            "casing": self.casing[idx, :width],
            "lengths": lengths,
            "chars": self.form_chars[distinct, :int(char_lengths.max())],
            "char_lengths": char_lengths,
            # the same lengths as a list, which stays on the host when the batch moves to the GPU: a character
            # BiLSTM packs its input with them, without a device-to-host copy (a sync) per step
            "char_lengths_host": char_lengths.tolist(),
            "char_index": char_index,
        }
        for name, tags in self.tags.items():
            batch[f"tags_{name}"] = tags[idx, :width]
        return batch
