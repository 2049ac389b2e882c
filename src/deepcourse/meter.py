"""The training-loss meter: sums since the last log and over the epoch, kept on the device.

Adding a step's loss is a tensor addition, so the hot path never waits for the device; the host reads the sums only
when it logs. The meter's state dict goes into every checkpoint, so a resumed run logs the same means as an
uninterrupted one.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


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
