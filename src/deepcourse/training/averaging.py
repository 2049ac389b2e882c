"""Weight averaging (`train.average`): an average of the weights taken while training, which evaluation, best/ and
the end of training use in place of the weights the optimizer last left.

    ema        average <- lerp(average, weights, 1 - factor)            the model trains on, untouched
    lookahead  the same, then weights <- average                        airbench94's Lookahead
    swa        average <- mean of the weights at every update           equal weights, from `start` on

An update is due after every `every`-th optimizer step from `start` on; the first one (at step 0 when start = 0, the
initial weights) copies the weights. `factor` is `decay` per update for ema and `decay ** every` for lookahead (its
decay is per step), times (step / total steps) ** ramp. Every floating-point parameter and buffer is averaged (batch
norm's running statistics too, so the average needs no extra pass over the data); integer buffers (batch counts)
are left as the model has them. Evaluation swaps the average into the model and the trained weights back
(`averaged_weights`); best/ is written from the average, so `evaluate`, `predict` and the report read it as any
run's weights; when training ends the model keeps the average. A checkpoint holds it (`state_dict`) beside the
trained weights, so a resumed run continues bit-exactly.

The updates are torch's own (`torch.optim.swa_utils.get_ema_multi_avg_fn`, `get_swa_multi_avg_fn`) on the tensors
in place. `swa_utils.AveragedModel` itself is not used: its update reads its update count on the host (a device
sync per step), it keeps a deep copy of the module rather than its tensors, and it has no ramp or Lookahead.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn, get_swa_multi_avg_fn

from deepcourse.errors import CheckpointError, RecipeError
from deepcourse.recipe.schema import Recipe
from deepcourse.recipe.techniques import WeightAveraging
from deepcourse.training.callbacks import Callback, TrainContext

_swa_update = get_swa_multi_avg_fn()


class WeightAverage(Callback):
    """The average of a model's weights under one `train.average` table. The loop calls it as a callback (first
    among them): `on_train_start` takes the initial copy, `on_step_end` updates after each optimizer step, and
    `on_train_end` leaves the average in the model.

    Several processes: distributed data parallel keeps the weights equal on every process, and every process makes
    the same updates at the same steps, so the average is the same everywhere; each keeps its own, and the main
    process's is checkpointed (a resume hands it to the others)."""

    def __init__(self, config: WeightAveraging, model: nn.Module, total_steps: int) -> None:
        self.config, self.total_steps = config, max(total_steps, 1)
        self.begin = math.ceil(config.start * total_steps)  # first step the average may begin at
        named = [(n, t) for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_floating_point()]
        self.names = [name for name, _ in named]
        # the model's own tensor objects (not detached views): a module that later replaces a tensor's .data (a
        # data-dependent initialisation, a move to another device) is still read and written where it is now
        self.live: list[torch.Tensor] = [tensor for _, tensor in named]
        self.averaged = [tensor.detach().clone() for tensor in self.live]
        self.groups = _by_dtype_and_device(self.averaged, self.live)
        self.count = 0  # updates made (0: the average has not begun; evaluation then uses the weights as they are)

    # -- the loop's hooks -----------------------------------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        if ctx.state.global_step == 0 and self.count == 0:
            self.update(0)

    def on_step_end(self, ctx: TrainContext, loss: float | None) -> None:
        self.update(ctx.state.global_step)

    def on_train_end(self, ctx: TrainContext) -> None:
        if self.count:  # lookahead: fast = slow; ema, swa: the model is the average from here on
            with torch.no_grad():
                torch._foreach_copy_(self.live, self.averaged)

    # -- the average ----------------------------------------------------------------------------------------------
    def factor(self, step: int) -> float:
        """The share of the average an ema or lookahead update at optimizer step `step` keeps."""
        per_update = self.config.decay ** (self.config.every if self.config.method == "lookahead" else 1)
        return per_update * (step / self.total_steps) ** self.config.ramp

    @torch.no_grad()
    def update(self, step: int) -> None:
        """The update due after optimizer step `step` (0: before the first), if one is due. All on the device, from
        Python numbers: no host sync."""
        if step < self.begin or step % self.config.every:
            return
        if self.count == 0:
            torch._foreach_copy_(self.averaged, self.live)
        elif self.config.method == "swa":
            for averaged, live in self.groups:
                _swa_update(averaged, live, self.count)
        else:
            ema_update = get_ema_multi_avg_fn(self.factor(step))
            for averaged, live in self.groups:
                ema_update(averaged, live, None)
            if self.config.method == "lookahead":
                torch._foreach_copy_(self.live, self.averaged)
        self.count += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The average in the model inside the block, the trained weights back after it (also on an error)."""
        if not self.count:
            yield
            return
        with torch.no_grad():
            kept = [tensor.detach().clone() for tensor in self.live]
            torch._foreach_copy_(self.live, self.averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.live, kept)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"method": self.config.method, "count": self.count,
                "averaged": dict(zip(self.names, self.averaged, strict=True))}

    def load_state_dict(self, state: dict[str, Any] | None, where: str) -> None:
        if state is None or state.get("method") != self.config.method or set(state["averaged"]) != set(self.names):
            raise CheckpointError(f"{where}: holds no train.average state of method '{self.config.method}' for this "
                                  f"model; resume with the recipe the run was started with")
        self.count = int(state["count"])
        with torch.no_grad():
            for name, averaged in zip(self.names, self.averaged, strict=True):
                averaged.copy_(state["averaged"][name])


def _by_dtype_and_device(averaged: list[torch.Tensor], live: list[torch.Tensor]
                         ) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """(averaged, live) lists of one dtype and device each: torch's update functions read the first tensor's dtype
    for the whole list."""
    groups: dict[tuple[torch.dtype, torch.device], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for mean, tensor in zip(averaged, live, strict=True):
        pair = groups.setdefault((mean.dtype, mean.device), ([], []))
        pair[0].append(mean)
        pair[1].append(tensor)
    return list(groups.values())


def build_average(recipe: Recipe, model: nn.Module, total_steps: int) -> WeightAverage | None:
    """The run's weight average (None without train.average); `model` is the plain module, for its tensors' names."""
    if recipe.train.average is None:
        return None
    require_trained_weights(recipe, model)
    return WeightAverage(recipe.train.average, model, total_steps)


def require_trained_weights(recipe: Recipe, model: nn.Module) -> None:
    """train.average on a model whose weights do not train would average a constant: said, not trained through."""
    if recipe.train.average is not None and not any(p.requires_grad for p in model.parameters()):
        what = "has no parameters" if not any(True for _ in model.parameters()) else "trains none of its parameters"
        raise RecipeError(f"train.average: model '{recipe.model.name}' {what}, so there are no weights to average; "
                          f"remove [train.average] or train some weights")


def averaged_weights(average: WeightAverage | None) -> AbstractContextManager[None]:
    """The average in the model for the block (evaluation, best/); the weights as they are without one."""
    return average.applied() if average is not None else nullcontext()
