"""Span F1: seqeval's conlleval-mode figures, after converting the training scheme to the scoring scheme."""
from __future__ import annotations

import pytest
import torch

from deepcourse_sequence.metrics import SpanF1

TAGS = ["O", "B-PER", "E-PER", "S-PER", "S-LOC", "I-PER"]


def ids(*rows: list[str]) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([[TAGS.index(t) for t in row] + [-100] * (width - len(row)) for row in rows])


def test_span_f1_with_scheme_conversion_and_padding() -> None:
    metric = SpanF1(TAGS, tag_scheme="BIOES", score_scheme="BIO", prefix="ner_")
    gold = ids(["B-PER", "E-PER", "O", "S-LOC"], ["S-PER"])
    pred = ids(["B-PER", "E-PER", "O", "O"], ["S-LOC"])
    metric.update({"preds": pred.masked_fill(gold == -100, 0), "targets": gold})  # padding predictions ignored
    result = metric.compute()
    assert result["ner_precision"] == pytest.approx(1 / 2)  # PER ok, LOC wrong
    assert result["ner_recall"] == pytest.approx(1 / 3)
    assert result["ner_f1"] == pytest.approx(0.4)
    assert result["ner_per_type"]["PER"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                             "support": 2}


def test_accumulates_across_updates_and_resets() -> None:
    metric = SpanF1(TAGS, tag_scheme="BIOES")
    for row in (["S-PER", "O"], ["B-PER", "I-PER", "E-PER"]):
        metric.update({"preds": ids(row), "targets": ids(row)})
    assert metric.compute()["f1"] == 1.0
    metric.reset()
    metric.update({"preds": ids(["O"]), "targets": ids(["O"])})
    assert metric.compute() == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}


def test_invalid_predictions_are_read_like_conlleval() -> None:
    metric = SpanF1(TAGS, tag_scheme="BIOES")
    metric.update({"preds": ids(["O", "I-PER", "E-PER"]), "targets": ids(["O", "B-PER", "E-PER"])})
    assert metric.compute()["f1"] == 1.0  # I- after O opens the entity, as conlleval reads it
