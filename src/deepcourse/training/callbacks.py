"""Callbacks: optional hooks into the training loop, and the state they see (`TrainContext`, `TrainState`).

The loop calls each hook at a fixed point and never depends on what a callback returns, so the hot path stays
readable. Register a subclass with `@CALLBACKS.register("name")`; its `__init__` keys are the table's keys
(`train.callbacks = [{name = "...", ...}]`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from deepcourse.recipe.schema import Recipe
    from deepcourse.task import DataBundle, Task
    from deepcourse.training.meter import LossMeter, TrainMetrics
    from deepcourse.training.tracking import RunLog


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly where it stopped."""

    epoch: int = 0  # epoch being trained (0-based)
    step_in_epoch: int = 0  # optimizer steps done in this epoch
    global_step: int = 0
    event: int = 0  # number of metrics.jsonl events written, to cut the log back on resume
    best_value: float | None = None
    best_epoch: int | None = None
    bad_evals: int = 0
    evaluated_epoch: int = -1
    done: bool = False
    num_processes: int = 1
    skipped_steps: int = 0
    elapsed_s: float = 0.0  # seconds of training before this checkpoint, over every resumed segment


@dataclass
class TrainContext:
    """What callbacks and helpers see of a running fit."""

    accelerator: Accelerator
    recipe: Recipe
    task: Task
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: TrainState
    run_dir: Path
    bundle: DataBundle
    log: RunLog  # metrics.jsonl and the trackers (a RunLog of no file on the other processes)
    loss: LossMeter
    steps_per_epoch: int = 0
    total_steps: int = 0
    callbacks: list[Callback] = field(default_factory=list)
    train_metrics: TrainMetrics = field(default_factory=lambda: _no_train_metrics())
    started: float = field(default_factory=time.perf_counter)  # perf_counter origin of the run, resumes included
    checkpointed: float = field(default_factory=time.perf_counter)  # when the last checkpoint was written
    average: Any = None  # train.average's WeightAverage (training/averaging.py), also the first of `callbacks`

    def elapsed(self) -> float:
        """Seconds the run has spent so far, earlier segments of a resumed run included."""
        return time.perf_counter() - self.started

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def _no_train_metrics() -> TrainMetrics:
    from deepcourse.training.meter import TrainMetrics

    return TrainMetrics(None)


class Callback:
    def on_train_start(self, ctx: TrainContext) -> None: ...
    def on_step_end(self, ctx: TrainContext, loss: float | None) -> None:
        """After every optimizer step; `loss` is the mean since the last log, on logging steps only."""
    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, Any]) -> None: ...
    def on_epoch_end(self, ctx: TrainContext) -> None: ...
    def on_train_end(self, ctx: TrainContext) -> None: ...
