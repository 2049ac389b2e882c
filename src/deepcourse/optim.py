"""Optimizers and learning-rate schedules a recipe can name in `[optimizer]` and `[scheduler]`.

Each builder's signature is the recipe table's schema (with ranges, so `lr = -1` is caught before training).
Every schedule is stepped once per optimizer step; epoch-based ones (step, multistep) convert epochs to steps so
they behave the same whatever the batch size. `plateau` is the exception: it is stepped after each evaluation, with
the monitored metric. Every schedule works for a run of any length, down to one step (a smoke test): one whose
phases do not fit is fitted to the run with a warning naming the key, never left to fail inside torch.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch.optim import lr_scheduler

from deepcourse.errors import RecipeWarning
from deepcourse.registry import OPTIMIZERS, SCHEDULERS

Params = Iterable[Any]
Lr = Annotated[float, Field(gt=0)]
Decay = Annotated[float, Field(ge=0)]
Momentum = Annotated[float, Field(ge=0, lt=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]
Eps = Annotated[float, Field(gt=0)]


def kernels(foreach: bool | None, fused: bool | None) -> dict[str, bool]:
    """torch's implementation choice: `foreach` (one kernel per group of tensors) or `fused` (one kernel for the whole
    update, fastest on a GPU); unset lets torch pick. The two exclude each other."""
    if foreach and fused:
        from deepcourse.errors import RecipeError

        raise RecipeError("optimizer.fused and optimizer.foreach: choose one (fused is the faster on a GPU)")
    return {k: v for k, v in (("foreach", foreach), ("fused", fused)) if v is not None}


@OPTIMIZERS.register("sgd")
def sgd(params: Params, lr: Lr = 0.1, momentum: Momentum = 0.0, nesterov: bool = False,
        weight_decay: Decay = 0.0, dampening: Annotated[float, Field(ge=0, le=1)] = 0.0,
        foreach: bool | None = None, fused: bool | None = None) -> torch.optim.Optimizer:
    """Stochastic gradient descent, optionally with (Nesterov) momentum and L2 weight decay."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay, dampening=dampening, **kernels(foreach, fused))


@OPTIMIZERS.register("adam")
def adam(params: Params, lr: Lr = 1e-3, betas: tuple[Beta, Beta] = (0.9, 0.999), eps: Eps = 1e-8,
         weight_decay: Decay = 0.0, amsgrad: bool = False, foreach: bool | None = None,
         fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam; weight_decay here is the classic L2 penalty added to the gradient."""
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                            **kernels(foreach, fused))


@OPTIMIZERS.register("nadam")
def nadam(params: Params, lr: Lr = 2e-3, betas: tuple[Beta, Beta] = (0.9, 0.999), eps: Eps = 1e-8,
          weight_decay: Decay = 0.0, momentum_decay: Annotated[float, Field(ge=0)] = 4e-3,
          foreach: bool | None = None) -> torch.optim.Optimizer:
    """Adam with Nesterov momentum (Dozat 2016): the optimizer Reimers & Gurevych (2017) found best for BiLSTM-CRF
    taggers."""
    return torch.optim.NAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             momentum_decay=momentum_decay, **kernels(foreach, None))


@OPTIMIZERS.register("adamw")
def adamw(params: Params, lr: Lr = 1e-3, betas: tuple[Beta, Beta] = (0.9, 0.999), eps: Eps = 1e-8,
          weight_decay: Decay = 0.01, amsgrad: bool = False, foreach: bool | None = None,
          fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (Loshchilov & Hutter)."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                             **kernels(foreach, fused))


@OPTIMIZERS.register("rmsprop")
def rmsprop(params: Params, lr: Lr = 1e-2, alpha: Beta = 0.99, eps: Eps = 1e-8, weight_decay: Decay = 0.0,
            momentum: Momentum = 0.0, centered: bool = False, foreach: bool | None = None) -> torch.optim.Optimizer:
    """RMSprop (Hinton's lecture 6e)."""
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                               momentum=momentum, centered=centered, **kernels(foreach, None))


@OPTIMIZERS.register("adagrad")
def adagrad(params: Params, lr: Lr = 1e-2, lr_decay: Decay = 0.0, weight_decay: Decay = 0.0,
            eps: Eps = 1e-10, foreach: bool | None = None, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdaGrad: per-parameter rates shrinking with the sum of squared gradients."""
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                               **kernels(foreach, fused))


@OPTIMIZERS.register("adadelta")
def adadelta(params: Params, lr: Lr = 1.0, rho: Beta = 0.9, eps: Eps = 1e-6,
             weight_decay: Decay = 0.0, foreach: bool | None = None) -> torch.optim.Optimizer:
    """AdaDelta (Zeiler 2012)."""
    return torch.optim.Adadelta(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, **kernels(foreach, None))


# -- schedules ----------------------------------------------------------------------------------------------------
Steps = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


def _warmup_steps(warmup_steps: int, warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    warm = max(warmup_steps, int(round(warmup_epochs * steps_per_epoch)))
    if warm > total_steps:
        key = "scheduler.warmup_steps" if warmup_steps >= warm else "scheduler.warmup_epochs"
        _warn(f"{key} makes a warm-up of {warm} steps, longer than the run ({total_steps} optimizer steps): the "
              f"learning rate never reaches optimizer.lr")
    return warm


def _warn(message: str) -> None:
    warnings.warn(message, RecipeWarning, stacklevel=2)  # at the check that found it


def _fitted_pct_start(pct_start: float, total_steps: int, three_phase: bool) -> float:
    """pct_start, moved only as far as a short run needs. OneCycleLR's phases end at steps pct*total - 1 (the peak),
    [2*pct*total - 2,] and total - 1, and torch divides by each phase's length: a phase of no steps (4 steps at
    0.25) is a ZeroDivisionError, a negative one a schedule that starts at the peak. Keep at least one step rising
    and one falling when the run is long enough for that, else put the peak half-way."""
    before = (total_steps - 1) / (2 if three_phase else 1)  # the peak comes before this step
    low, high = (1.0, before - 1) if before - 1 >= 1 else (before / 2, before / 2)
    peak = min(max(pct_start * total_steps - 1, low), high)
    return (peak + 1) / total_steps


@SCHEDULERS.register("constant")
def constant(optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int, warmup_steps: Steps = 0,
             warmup_epochs: Annotated[float, Field(ge=0)] = 0.0) -> lr_scheduler.LRScheduler:
    """Constant learning rate, after an optional linear warm-up."""
    warm = _warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch, total_steps)
    return lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)


@SCHEDULERS.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, warmup_steps: Steps = 0,
           warmup_epochs: Annotated[float, Field(ge=0)] = 0.0, min_lr_ratio: Fraction = 0.0
           ) -> lr_scheduler.LRScheduler:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr at the last step."""
    warm = _warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch, total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr_scheduler.LambdaLR(optimizer, factor)


@SCHEDULERS.register("linear")
def linear(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, warmup_steps: Steps = 0,
           warmup_epochs: Annotated[float, Field(ge=0)] = 0.0, min_lr_ratio: Fraction = 0.0
           ) -> lr_scheduler.LRScheduler:
    """Linear warm-up, then linear decay to min_lr_ratio * lr."""
    warm = _warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch, total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 1 - (1 - min_lr_ratio) * progress
    return lr_scheduler.LambdaLR(optimizer, factor)


@SCHEDULERS.register("onecycle", aliases=("one_cycle",))
def onecycle(optimizer: torch.optim.Optimizer, total_steps: int, pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.25,
             anneal_strategy: Literal["cos", "linear"] = "cos", div_factor: Annotated[float, Field(gt=0)] = 25.0,
             final_div_factor: Annotated[float, Field(gt=0)] = 1e4, three_phase: bool = False,
             cycle_momentum: bool = True) -> lr_scheduler.LRScheduler:
    """Smith's one-cycle policy: the optimizer's lr is the peak; momentum cycles inversely when it has one."""
    has_momentum = any("momentum" in g and g["momentum"] > 0 or "betas" in g for g in optimizer.param_groups)
    total_steps = max(total_steps, 2)
    fitted = _fitted_pct_start(pct_start, total_steps, three_phase)
    if abs(fitted - pct_start) > 1e-9:
        _warn(f"scheduler.pct_start = {pct_start} does not fit a run of {total_steps} optimizer steps (a phase of "
              f"the one-cycle schedule would have less than one step); using {fitted:.3g}")
    return lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
        pct_start=fitted, anneal_strategy=anneal_strategy,
        div_factor=div_factor, final_div_factor=final_div_factor, three_phase=three_phase,
        cycle_momentum=cycle_momentum and has_momentum)


@SCHEDULERS.register("triangle")
def triangle(optimizer: torch.optim.Optimizer, total_steps: int, pct_start: Fraction = 0.23,
             start_ratio: Annotated[float, Field(ge=0)] = 0.2, end_ratio: Annotated[float, Field(ge=0)] = 0.07
             ) -> lr_scheduler.LRScheduler:
    """airbench's triangle: start_ratio * lr rising linearly to lr, then falling linearly to end_ratio * lr.

    The rise takes the first pct_start of the steps; the fall reaches end_ratio * lr at the last step. A one-cycle
    schedule without its momentum cycle, starting high (airbench94: 0.2, 0.23, 0.07)."""
    warm = int(total_steps * pct_start)

    def factor(step: int) -> float:
        if step < warm:
            return start_ratio + (1 - start_ratio) * step / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 1 - (1 - end_ratio) * progress
    return lr_scheduler.LambdaLR(optimizer, factor)


@SCHEDULERS.register("step")
def step(optimizer: torch.optim.Optimizer, steps_per_epoch: int, step_epochs: Annotated[int, Field(gt=0)] = 30,
         gamma: Annotated[float, Field(gt=0)] = 0.1) -> lr_scheduler.LRScheduler:
    """Multiply the lr by gamma every step_epochs epochs."""
    return lr_scheduler.StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=gamma)


@SCHEDULERS.register("multistep")
def multistep(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
              milestones: list[Annotated[int, Field(gt=0)]] = [30, 60],  # noqa: B006 - read-only default
              gamma: Annotated[float, Field(gt=0)] = 0.1) -> lr_scheduler.LRScheduler:
    """Multiply the lr by gamma at each milestone epoch."""
    return lr_scheduler.MultiStepLR(optimizer, milestones=[m * steps_per_epoch for m in milestones], gamma=gamma)


@SCHEDULERS.register("exponential")
def exponential(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                gamma: Annotated[float, Field(gt=0, le=1)] = 0.95) -> lr_scheduler.LRScheduler:
    """Multiply the lr by gamma every epoch (smoothly, per step): NCRF++'s lr / (1 + decay * epoch) cousin."""
    return lr_scheduler.LambdaLR(optimizer, lambda s: gamma ** (s / steps_per_epoch))


@SCHEDULERS.register("inverse_time")
def inverse_time(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                 decay: Annotated[float, Field(ge=0)] = 0.05) -> lr_scheduler.LRScheduler:
    """lr / (1 + decay * epoch), the decay of Ma & Hovy and NCRF++, applied at each epoch boundary."""
    return lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + decay * (s // steps_per_epoch)))


@SCHEDULERS.register("plateau")
def plateau(optimizer: torch.optim.Optimizer, monitor_mode: Literal["min", "max"] = "min",
            factor: Annotated[float, Field(gt=0, lt=1)] = 0.1, patience: Annotated[int, Field(ge=0)] = 3,
            threshold: Annotated[float, Field(ge=0)] = 1e-4, min_lr: Annotated[float, Field(ge=0)] = 0.0,
            mode: Literal["auto", "min", "max"] = "auto") -> lr_scheduler.ReduceLROnPlateau:
    """Reduce the lr when the monitored validation metric stops improving (stepped after each evaluation).
    mode 'auto' follows the run's monitor mode (train.monitor_mode, else the task's)."""
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode=monitor_mode if mode == "auto" else mode, factor=factor,
                                          patience=patience, threshold=threshold, min_lr=min_lr)
