"""When training stops early: Ctrl-C agreed between processes, and early stopping on the monitored metric.

Every process must stop at the same step, or the next collective operation waits forever; `agreed` makes one
process's Ctrl-C everyone's decision. Which evaluation is better and when patience runs out is decided here too, so
the loop only asks.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .callbacks import TrainState
from .schema import TrainSection


class Interrupted(Exception):
    """Ctrl-C: a checkpoint was written and the command exits 130."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted; state saved in {checkpoint}" if checkpoint else "interrupted")
        self.checkpoint = checkpoint


class StopRequest:
    """First Ctrl-C asks the loop to stop at the next step boundary and save; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (embedded use): keep the default behaviour
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ndeepcourse: stopping after this step and saving a checkpoint (Ctrl-C again to abort)",
              flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def agreed(accelerator: Accelerator, flag: bool) -> bool:
    """True if any process says so: all processes must stop at the same step or collectives hang."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def record_evaluation(state: TrainState, value: float, epoch: int, *, mode: str, train: TrainSection) -> bool:
    """Update the best value and the patience count with one evaluation; True when it is a new best."""
    min_delta = train.early_stopping.min_delta if train.early_stopping else 0.0
    better = state.best_value is None or (value > state.best_value + min_delta if mode == "max"
                                          else value < state.best_value - min_delta)
    if better:
        state.best_value, state.best_epoch, state.bad_evals = float(value), epoch, 0
    else:
        state.bad_evals += 1
    return better


def patience_exhausted(state: TrainState, train: TrainSection) -> bool:
    return bool(train.early_stopping) and state.bad_evals >= train.early_stopping.patience  # type: ignore[union-attr]
