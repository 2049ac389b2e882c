"""Vocabularies (build, save/load, unknown words) and pretrained vectors (GloVe text, gz, coverage)."""
from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest
import torch

from deepcourse.api import DataError
from deepcourse_sequence.vocab import PAD, UNK, VocabOptions, Vocabulary, embedding_matrix, read_vectors, word_lookup


def test_from_counts_orders_by_frequency_and_drops_rare() -> None:
    vocab = Vocabulary.from_counts(Counter({"the": 5, "cat": 2, "a": 5, "rare": 1}), min_freq=2)
    assert vocab.itos == [PAD, UNK, "a", "the", "cat"]
    assert vocab.index("cat") == 4 and vocab.index("rare") == vocab.unk_index == 1
    assert vocab.indices(["the", "zebra"]) == [3, 1]


def test_vocabulary_save_and_load(tmp_path: Path) -> None:
    vocab = Vocabulary(["Straße", "EU", "<pad>"])  # non-ASCII survives, a repeated special is not duplicated
    vocab.save(tmp_path / "v.json")
    loaded = Vocabulary.load(tmp_path / "v.json")
    assert loaded == vocab and loaded.itos == [PAD, UNK, "Straße", "EU"]
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    tags = Vocabulary(["O", "B-PER"], specials=(), unk=None)
    assert Vocabulary.from_dict(tags.to_dict()) == tags
    with pytest.raises(KeyError):
        tags.index("I-PER")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a saved vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="not found"):
        Vocabulary.load(tmp_path / "missing.json")


def test_extend_keeps_existing_ids() -> None:
    vocab = Vocabulary(["a", "b"])
    bigger = vocab.extend(["c", "a"])
    assert bigger.itos[: len(vocab)] == vocab.itos and bigger.index("c") == 4 and len(bigger) == 5


def test_options_and_lookup_fall_back_to_lower_case() -> None:
    options = VocabOptions(normalize_digits=True)
    assert options.key("Route66") == "Route00"
    vocab = Vocabulary(["germany", "Route00"])
    assert word_lookup(vocab, options, ["Germany", "Route66", "France"]) == [2, 3, 1]
    assert VocabOptions(lowercase=True).key("EU") == "eu"


def write_vectors(path: Path, lines: list[str]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", ["vectors.txt", "vectors.txt.gz"])
def test_read_vectors_and_matrix(tmp_path: Path, name: str) -> None:
    path = write_vectors(tmp_path / name, ["germany 1 2", "the 3 4", "Paris 5 6"])
    vectors, dim = read_vectors(path)
    assert dim == 2 and vectors["the"] == [3.0, 4.0]
    vocab = Vocabulary(["Germany", "the", "Paris", "unseen"])
    matrix, found = embedding_matrix(vocab, vectors, dim)
    assert found == 3  # exact match first (Paris), then lower case (Germany -> germany)
    assert matrix[vocab.index("Germany")].tolist() == [1.0, 2.0] and matrix[vocab.index("Paris")].tolist() == [5, 6]
    assert matrix[0].abs().sum() == 0  # padding
    assert matrix[vocab.index("unseen")].abs().max() <= (3 / 2) ** 0.5
    only, _ = read_vectors(path, lambda w: w == "the")
    assert list(only) == ["the"]


def test_read_vectors_errors(tmp_path: Path) -> None:
    header = write_vectors(tmp_path / "w2v.txt", ["2 2", "a 1 2", "b 3 4"])
    assert set(read_vectors(header)[0]) == {"a", "b"}  # a word2vec "count dim" header is skipped
    ragged = write_vectors(tmp_path / "ragged.txt", ["a 1 2", "b 3"])
    with pytest.raises(DataError, match=r"ragged\.txt:2: vector of 1 values, earlier ones have 2"):
        read_vectors(ragged)
    text = write_vectors(tmp_path / "text.txt", ["a 1 x"])
    with pytest.raises(DataError, match=r"text\.txt:1: vector values must be numbers"):
        read_vectors(text)
    with pytest.raises(DataError, match="embeddings file not found"):
        read_vectors(tmp_path / "missing.txt")


def test_matrix_is_reproducible() -> None:
    vocab = Vocabulary(["x", "y"])
    a, _ = embedding_matrix(vocab, {}, 4, seed=3)
    b, _ = embedding_matrix(vocab, {}, 4, seed=3)
    assert torch.equal(a, b)
