"""Entity-level (span) precision, recall and F1 with seqeval, in conlleval's default mode.

Scores are computed on whole spans: a predicted entity counts only if its type and both boundaries match. The
tags are converted from the training scheme (BIOES, say) to the scoring scheme (BIO) first, as NCRF++ does, so
the figures are comparable with published CoNLL results.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from deepcourse.api import METRICS, Metric

from .schemes import Scheme, convert


@METRICS.register("span_f1")
class SpanF1(Metric):
    """Micro precision/recall/F1 over labelled spans, plus per-type scores under `<prefix>per_type`."""

    def __init__(self, tags: Sequence[str], *, tag_scheme: Scheme = "BIO", score_scheme: Scheme = "BIO",
                 preds: str = "preds", targets: str = "targets", prefix: str = "",
                 ignore_index: int = -100) -> None:
        self.tags, self.tag_scheme, self.score_scheme = list(tags), tag_scheme, score_scheme
        self.preds, self.targets, self.prefix, self.ignore_index = preds, targets, prefix, ignore_index
        self.reset()

    def reset(self) -> None:
        self.true: list[list[str]] = []
        self.pred: list[list[str]] = []

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        targets, preds = outputs[self.targets].cpu(), outputs[self.preds].cpu()
        lengths = (targets != self.ignore_index).sum(dim=1).tolist()
        names, n = self.tags, len(self.tags)
        for gold, guess, length in zip(targets.tolist(), preds.tolist(), lengths, strict=True):
            self.true.append([names[i] for i in gold[:length]])
            self.pred.append([names[i] if 0 <= i < n else "O" for i in guess[:length]])

    def compute(self) -> dict[str, Any]:
        from seqeval.metrics import classification_report

        true = [convert(s, self.tag_scheme, self.score_scheme) for s in self.true]
        pred = [convert(s, self.tag_scheme, self.score_scheme) for s in self.pred]
        p = self.prefix
        if not any(t != "O" for s in true + pred for t in s):
            return {f"{p}precision": 0.0, f"{p}recall": 0.0, f"{p}f1": 0.0, f"{p}per_type": {}}
        report = classification_report(true, pred, output_dict=True, zero_division=0)
        micro = report.pop("micro avg")
        per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                        "f1": float(v["f1-score"]), "support": int(v["support"])}
                    for k, v in sorted(report.items()) if not k.endswith(" avg")}
        return {f"{p}precision": float(micro["precision"]), f"{p}recall": float(micro["recall"]),
                f"{p}f1": float(micro["f1-score"]), f"{p}per_type": per_type}
