"""${dist}: the `${name}-regression` task, its dataset and model (importing this module registers them)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from deepcourse.api import (DATASETS, MODELS, TASKS, ArrayDataset, DataBundle, MeanLoss, MetricCollection, Task,
                            UserError, call_builder, resolve_splits)


@DATASETS.register("${name}_waves", task="${name}-regression")  # the task it feeds
def ${name}_waves(seed: int, samples: Annotated[int, Field(gt=10)] = 1024,
                  frequency: Annotated[float, Field(gt=0)] = 3.0,
                  noise: Annotated[float, Field(ge=0)] = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of y = sin(frequency * x) + noise for x in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, 1, generator=g) * 2 - 1
    y = torch.sin(frequency * x) + noise * torch.randn(samples, 1, generator=g)
    return x, y


@MODELS.register("${name}_mlp")
def ${name}_mlp(in_features: int, hidden: Annotated[int, Field(gt=0)] = 64,
                layers: Annotated[int, Field(gt=0)] = 2) -> nn.Module:
    """A tanh MLP with one output."""
    blocks: list[nn.Module] = []
    width = in_features
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, 1))


@TASKS.register("${name}-regression")
class ${name}Regression(Task):
    """Regression with mean squared error."""

    monitor = "mse"  # the metric that picks the best epoch and drives early stopping
    monitor_mode = "min"

    def __init__(self, huber: bool = False) -> None:
        """huber: train with the Huber loss instead of the squared error (evaluation always reports MSE)."""
        super().__init__()
        self.huber = huber

    def setup_data(self, data: Any, *, splits: Sequence[str], seed: int,
                   artifacts: Mapping[str, Any] | None = None) -> DataBundle:
        facts = {"in_features": 1}
        if not splits:  # predict: nothing to load, the facts are enough
            return DataBundle({}, facts=facts, artifacts=dict(artifacts or {}))
        x, y = call_builder(DATASETS.get(data.name), data.options, loc="data", provided={"seed": seed})
        # the dataset is one split; data.holdout and data.val_split carve the holdout and validation from it
        # (resolve_splits: the core's meaning of both keys)
        available = {"train": ArrayDataset(x=x, y=y)}
        chosen = resolve_splits(available, splits, dataset=data.name, val_split=data.val_split, seed=seed,
                                holdout=data.holdout)
        return DataBundle(chosen, facts=facts, artifacts={"frequency_hint": "sin"})

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = F.huber_loss if self.huber else F.mse_loss
        return loss(model(batch["x"]), batch["y"])

    def evaluation_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"squared_error": (model(batch["x"]) - batch["y"]).pow(2).squeeze(-1)}

    def create_metrics(self) -> MetricCollection:
        return MetricCollection(MeanLoss(key="squared_error", name="mse"))

    def predict(self, model: nn.Module, inputs: Sequence[str], *, batch_size: int,
                device: torch.device) -> Iterator[dict[str, Any]]:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            try:
                x = torch.tensor([[float(v)] for v in chunk], device=device)
            except ValueError:
                raise UserError(f"inputs: expected numbers, got {chunk!r}") from None
            with torch.no_grad():
                y = model(x).squeeze(-1).tolist()
            for value, pred in zip(chunk, y):
                yield {"x": float(value), "y": pred, "sin": math.sin(3 * float(value))}
