"""Callbacks: optional hooks into the training loop, named in `train.callbacks = [{name = "...", ...}]`.

The loop calls each hook at a fixed point and never depends on what a callback returns, so the hot path stays
readable. Register a subclass with `@CALLBACKS.register("name")`; its `__init__` keys are the table's keys.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import TrainContext


class Callback:
    def on_train_start(self, ctx: TrainContext) -> None: ...
    def on_step_end(self, ctx: TrainContext, loss: float | None) -> None:
        """After every optimizer step; `loss` is the mean since the last log, on logging steps only."""
    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, Any]) -> None: ...
    def on_epoch_end(self, ctx: TrainContext) -> None: ...
    def on_train_end(self, ctx: TrainContext) -> None: ...
