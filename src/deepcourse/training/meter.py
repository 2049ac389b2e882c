"""What the loop measures on the training split: the loss (since the last log and over the epoch) and the task's
cheap training metrics (accuracy while training), kept on the device.

Adding a step's loss is a tensor addition and a step's outputs are only kept, so the hot path never waits for the
device; the host reads them when it logs. Both meters' state goes into every checkpoint, so a resumed run logs the
same numbers as an uninterrupted one.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from accelerate import Accelerator

from deepcourse.metrics import Metric, scalars


class LossMeter:
    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.load_state_dict({})

    def add(self, loss: torch.Tensor) -> None:
        loss = loss.detach()
        self._log_sum += loss
        self._epoch_sum += loss
        self.log_n += 1
        self.epoch_n += 1

    def log_mean(self) -> torch.Tensor:
        """Mean loss since the last `reset_log` (this process), still on the device."""
        return self._log_sum / max(self.log_n, 1)

    def epoch_mean(self) -> torch.Tensor | None:
        return self._epoch_sum / self.epoch_n if self.epoch_n else None

    def reset_log(self) -> None:
        self._log_sum.zero_()
        self.log_n = 0

    def reset_epoch(self) -> None:
        self._epoch_sum.zero_()
        self.epoch_n = 0

    def state_dict(self) -> dict[str, float | int]:
        return {"log_sum": float(self._log_sum), "log_n": self.log_n, "epoch_sum": float(self._epoch_sum),
                "epoch_n": self.epoch_n}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._log_sum = torch.tensor(float(state.get("log_sum", 0.0)), device=self.device)
        self._epoch_sum = torch.tensor(float(state.get("epoch_sum", 0.0)), device=self.device)
        self.log_n, self.epoch_n = int(state.get("log_n", 0)), int(state.get("epoch_n", 0))


class TrainMetrics:
    """The task's training-split metrics (`Task.create_train_metrics`), running over the epoch. Each step's outputs
    wait on the device until `fold` (at logging steps and checkpoints), which gathers them from every process and
    updates the metrics once. Reading them (`values`, `state_dict`) with outputs still waiting is an error, not a
    stale number: fold first, at the same step in every process."""

    def __init__(self, metrics: Metric | None, pad_index: int = -100) -> None:
        self.metrics, self.pad_index = metrics, pad_index
        self.pending: list[dict[str, torch.Tensor]] = []
        self.folded = 0  # batches in the metrics this epoch
        if metrics is not None:
            metrics.reset()

    def add(self, outputs: Mapping[str, torch.Tensor] | None) -> None:
        if self.metrics is not None and outputs:
            self.pending.append({k: v.detach() for k, v in outputs.items()})

    def fold(self, accelerator: Accelerator) -> None:
        """Update the metrics with the kept outputs. Call it at the same steps in every process (it gathers)."""
        if self.metrics is None:
            return
        for outputs in self.pending:
            if accelerator.num_processes > 1:
                outputs = accelerator.gather(accelerator.pad_across_processes(outputs, dim=1,
                                                                              pad_index=self.pad_index))
            self.metrics.update(outputs)
            self.folded += 1
        self.pending.clear()

    def values(self) -> dict[str, float]:
        """The metrics so far this epoch (after `fold`); empty when the task has none or nothing was added."""
        self._require_folded("values")
        if self.metrics is None or not self.folded:
            return {}
        return {k: v for k, v in scalars(self.metrics.compute()).items() if k != "num_samples"}

    def reset(self) -> None:
        self.pending.clear()
        self.folded = 0
        if self.metrics is not None:
            self.metrics.reset()

    def state_dict(self) -> dict[str, Any] | None:
        """The metrics' sums (after `fold`: the kept outputs are not part of it)."""
        self._require_folded("state_dict")
        return None if self.metrics is None else {"folded": self.folded, "metrics": self.metrics.state_dict()}

    def _require_folded(self, reading: str) -> None:
        if self.pending:
            raise RuntimeError(f"TrainMetrics.{reading}(): the outputs of {len(self.pending)} step(s) are not in the "
                               f"metrics yet; call fold(accelerator) first, at the same step in every process (it "
                               f"gathers)")

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if self.metrics is not None and state is not None:
            self.folded = int(state["folded"])
            self.metrics.load_state_dict(state["metrics"])
