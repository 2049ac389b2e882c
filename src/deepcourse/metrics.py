"""Metric accumulators: `update` with gathered evaluation outputs, `compute` once at the end of evaluation.

Accumulating sums (not per-batch means) keeps results exact however the data is split across batches and
processes. Tasks compose them in a MetricCollection; plugins register their own in `METRICS`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from deepcourse.registry import METRICS


class Metric:
    """Base class: subclasses keep running sums in `reset` and turn them into numbers in `compute`."""

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The metric's attributes (its sums and settings: plain values and tensors), as JSON, so a checkpoint can
        carry a running training metric and a resumed run continues it. Override for other kinds of state."""
        state: dict[str, Any] = {}
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                state[key] = {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
            elif value is None or isinstance(value, (bool, int, float, str, list, dict)):
                state[key] = value
            else:
                raise TypeError(f"{type(self).__name__}.{key} is a {type(value).__name__}: override state_dict")
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            if isinstance(value, dict) and set(value) == {"tensor", "dtype"}:
                value = torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
            setattr(self, key, value)


@METRICS.register("mean_loss")
class MeanLoss(Metric):
    """Average of the per-sample `loss` output (evaluation loss comparable to the training loss)."""

    def __init__(self, key: str = "loss", name: str = "loss") -> None:
        self.key, self.name = key, name
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        values = outputs[self.key].detach().float()
        self.total += float(values.sum())
        self.count += values.numel()

    def compute(self) -> dict[str, Any]:
        return {self.name: self.total / max(self.count, 1)}


@METRICS.register("accuracy")
class Accuracy(Metric):
    """Share of `preds` equal to `targets`; positions where targets == ignore_index are skipped."""

    def __init__(self, name: str = "accuracy", ignore_index: int = -100, preds: str = "preds",
                 targets: str = "targets") -> None:
        self.name, self.ignore_index, self.preds, self.targets = name, ignore_index, preds, targets
        self.reset()

    def reset(self) -> None:
        self.correct, self.count = 0, 0

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        preds, targets = outputs[self.preds], outputs[self.targets]
        keep = targets != self.ignore_index
        self.correct += int((preds[keep] == targets[keep]).sum())
        self.count += int(keep.sum())

    def compute(self) -> dict[str, Any]:
        return {self.name: self.correct / max(self.count, 1)}


@METRICS.register("topk_accuracy")
class TopKAccuracy(Metric):
    """Share of samples whose target is among the k highest `logits`."""

    def __init__(self, k: int = 5, logits: str = "logits", targets: str = "targets") -> None:
        self.k, self.logits, self.targets = k, logits, targets
        self.reset()

    def reset(self) -> None:
        self.correct, self.count = 0, 0

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        logits, targets = outputs[self.logits], outputs[self.targets]
        k = min(self.k, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        self.correct += int((top == targets.unsqueeze(-1)).any(-1).sum())
        self.count += targets.numel()

    def compute(self) -> dict[str, Any]:
        return {f"top{self.k}_accuracy": self.correct / max(self.count, 1)}


@METRICS.register("confusion_matrix")
class ConfusionMatrix(Metric):
    """Counts[true, predicted]; also reports per-class accuracy (recall) by class name."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, preds: str = "preds",
                 targets: str = "targets") -> None:
        self.num_classes, self.preds, self.targets = num_classes, preds, targets
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        t = outputs[self.targets].reshape(-1).long().cpu()
        p = outputs[self.preds].reshape(-1).long().cpu()
        keep = (t >= 0) & (t < self.num_classes)
        idx = t[keep] * self.num_classes + p[keep]
        self.matrix += torch.bincount(idx, minlength=self.num_classes ** 2).reshape(self.num_classes, -1)

    def compute(self) -> dict[str, Any]:
        per_class = self.matrix.diag().double() / self.matrix.sum(1).clamp(min=1).double()
        return {"confusion_matrix": self.matrix.tolist(),
                "per_class_accuracy": {n: round(float(a), 6) for n, a in zip(self.class_names, per_class)}}


class MetricCollection(Metric):
    """Several metrics updated together; `compute` merges their dictionaries."""

    def __init__(self, *metrics: Metric) -> None:
        self.metrics = list(metrics)

    def reset(self) -> None:
        for m in self.metrics:
            m.reset()

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        for m in self.metrics:
            m.update(outputs)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.metrics:
            out.update(m.compute())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": [m.state_dict() for m in self.metrics]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for metric, saved in zip(self.metrics, state["metrics"], strict=True):
            metric.load_state_dict(saved)


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The plain numbers of a metrics dict (for logs, curves and monitors)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
