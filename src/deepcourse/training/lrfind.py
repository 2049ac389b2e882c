"""The learning-rate range test (Smith 2017, "Cyclical learning rates for training neural networks"), as fastai's
`lr_find` and Lightning's LR finder run it: train for a short while with the rate growing exponentially from a
tiny to a large value, and read off where the loss falls fastest.

The loop is written here (`lr_range_test`, some forty lines) rather than taken from torch-lr-finder: a task's loss
comes from `Task.training_step(model, batch)`, not from a criterion applied to (output, label), and the steps must
run through Accelerate (device, mixed precision and its gradient scaler, accumulation, clipping) exactly as
training does; neither Accelerate nor torch has such a loop. It leaves the model, the optimizer (its state and its
rates), the gradient scaler and torch's random number generators exactly as they were.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepcourse.errors import UserError
from deepcourse.recipe.schema import Recipe

#: the smoothing of the loss curve: an exponential moving average, bias-corrected, as fastai and Lightning use, with
#: torch-lr-finder's weight 0.95 (their 0.98 lags ~50 steps behind the loss: 3 decades of rate in a 100-step test)
SMOOTHING = 0.95
#: stop once the smoothed loss exceeds this multiple of the lowest seen: the rate is past any use
DIVERGE = 4.0
#: the first steps are left out of the suggestion (the average is still settling there)
SKIP_START = 10


@dataclass
class LRFindResult:
    """The rate and the loss (as measured, and smoothed) at each step, and the rates read off the curve:
    `suggestion` where the smoothed loss falls fastest (per decade of rate, before its minimum), `min_loss_lr` the
    rate of the lowest smoothed loss (fastai's older rule suggests a tenth of it)."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    min_loss_lr: float | None = None
    stopped: str = "reached --end-lr"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.suggestion is None or self.min_loss_lr is None:
            return (f"lr-find: no suggestion: {len(self.lrs)} steps ({self.stopped}) are too few to find where the "
                    f"loss falls fastest; widen --start-lr .. --end-lr or give more --steps")
        return (f"suggested learning rate: {self.suggestion:.3g} (steepest fall of the smoothed loss); lowest loss at "
                f"{self.min_loss_lr:.3g}, a tenth of it is {self.min_loss_lr / 10:.3g}. {len(self.lrs)} steps from "
                f"{self.lrs[0]:.3g} to {self.lrs[-1]:.3g} ({self.stopped})")


def lr_range_test(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any],
                  loss_of: Callable[[Any], torch.Tensor], *, start_lr: float = 1e-7, end_lr: float = 10.0,
                  num_steps: int = 100, accelerator: Any = None, clip_grad_norm: float | None = None
                  ) -> LRFindResult:
    """Run the test: optimizer step i uses rate start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)), on the
    batches in turn (from the start again if there are too few); `loss_of(batch)` is the training loss. With an
    `accelerator` (model, optimizer and batches prepared by it) the steps use its backward, accumulation and
    clipping. Everything the steps change is restored at the end, also after an error."""
    check_range(start_lr, end_lr)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, model.training)
    scaler = getattr(accelerator, "scaler", None)
    scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
    result = LRFindResult()
    factor = (end_lr / start_lr) ** (1 / max(num_steps - 1, 1))
    scales = [g["lr"] / optimizer.param_groups[0]["lr"] for g in optimizer.param_groups]  # optimizer.groups' ratios
    average, lowest, pending = 0.0, math.inf, []
    try:
        model.train()
        for batch in _again_and_again(batches):
            step = len(result.lrs)
            lr = start_lr * factor ** step
            for group, scale in zip(optimizer.param_groups, scales, strict=True):
                group["lr"] = lr * scale
            with accelerator.accumulate(model) if accelerator is not None else contextlib.nullcontext():
                loss = loss_of(batch)
                if not torch.isfinite(loss).all():
                    result.stopped = f"the loss became {float(loss.detach())} at rate {lr:.3g}"
                    break
                accelerator.backward(loss) if accelerator is not None else loss.backward()
                synced = accelerator is None or accelerator.sync_gradients
                if synced and clip_grad_norm:
                    parameters = model.parameters()
                    accelerator.clip_grad_norm_(parameters, clip_grad_norm) if accelerator is not None else \
                        torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            pending.append(float(loss.detach()))
            if not synced:
                continue
            value, pending = sum(pending) / len(pending), []
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            result.lrs.append(lr)
            result.losses.append(value)
            result.smoothed.append(smoothed)
            lowest = min(lowest, smoothed)
            if len(result.lrs) >= num_steps:
                break
            if step >= SKIP_START and smoothed > DIVERGE * lowest:
                result.stopped = f"the loss diverged at rate {lr:.3g}"
                break
    finally:
        model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(saved[2])
        if saved[3] is not None:
            torch.cuda.set_rng_state_all(saved[3])
        if scaler is not None:
            scaler.load_state_dict(scaler_state)
        model.train(saved[4])
    result.suggestion, result.min_loss_lr = suggest(result.lrs, result.smoothed)
    return result


def check_range(start_lr: float, end_lr: float) -> None:
    """Rates the test can step through: finite, above 0, rising, and a ratio a float holds (nan passes `> 0`: every
    comparison with it is false, so it is checked first)."""
    for value, option in ((start_lr, "--start-lr"), (end_lr, "--end-lr")):
        if not math.isfinite(value) or value <= 0:
            raise UserError(f"{option} {value:g}: a learning rate is a finite number above 0 (e.g. --start-lr 1e-7 "
                            f"--end-lr 10)")
    if start_lr >= end_lr:
        raise UserError(f"--start-lr {start_lr:g} must be below --end-lr {end_lr:g}: the test raises the rate from "
                        f"one to the other")
    if not math.isfinite(end_lr / start_lr):
        raise UserError(f"--start-lr {start_lr:g} and --end-lr {end_lr:g}: the range is wider than a float holds; "
                        f"a range test spans a few decades (e.g. --start-lr 1e-7 --end-lr 10)")


def _again_and_again(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches, from the start again when they run out (a small training set); none at all is an error."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise UserError("lr-find: the training data gave no batch")


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """(the rate where the smoothed loss falls fastest per decade of rate, before its minimum; the rate of the
    minimum). The first SKIP_START steps are left out; None when too few steps remain."""
    if len(lrs) < SKIP_START + 3:
        return None, None
    lowest = min(range(SKIP_START, len(smoothed)), key=lambda i: smoothed[i])
    xs = [math.log10(v) for v in lrs]
    end = max(lowest, SKIP_START + 2)
    slopes = {i: (smoothed[i + 1] - smoothed[i - 1]) / (xs[i + 1] - xs[i - 1]) for i in range(SKIP_START, end)}
    steepest = min(slopes, key=lambda i: slopes[i])
    return lrs[steepest], lrs[lowest]


def find_lr(recipe: Recipe, out: Path | None, *, start_lr: float, end_lr: float, num_steps: int) -> LRFindResult:
    """The range test of `recipe`'s task, data, model and optimizer (its [scheduler] is not used: the test sets the
    rate itself), run as training runs them; writes lr_find.png, lr_find.csv and lr_find.json into `out` (through
    a temporary folder) and creates nothing else. `out` None (`deepcourse.lr_find` in a notebook): writes nothing."""
    from accelerate.utils import set_seed

    from deepcourse.rundir.files import atomic_write
    from deepcourse.training.accelerator import make_accelerator, torch_threads
    from deepcourse.training.build import build_run
    from deepcourse.training.loop import split_step

    with torch_threads(recipe.train.threads):
        accelerator = make_accelerator(recipe, trackers=False)
        set_seed(recipe.seed, deterministic=recipe.train.deterministic)
        run = build_run(recipe, accelerator, lr_test=True)  # the training loader alone, in random order
        model, task = run.model, run.task
        assert task is not None and run.optimizer is not None and run.train_loader is not None  # a run's pieces

        def loss_of(batch: Any) -> torch.Tensor:
            return split_step(task.training_step(model, batch))[0]

        result = lr_range_test(model, run.optimizer, run.train_loader, loss_of, start_lr=start_lr, end_lr=end_lr,
                               num_steps=num_steps, accelerator=accelerator,
                               clip_grad_norm=recipe.train.clip_grad_norm)
    if out is not None:
        with atomic_write(out, merge=True) as tmp:
            write_result(result, recipe.name, tmp)
    return result


def write_result(result: LRFindResult, name: str, folder: Path) -> None:
    """lr_find.png (see `draw`), lr_find.csv (every step), lr_find.json."""
    from deepcourse.rundir import files

    rows = ["step,lr,loss,smoothed_loss"] + [f"{i + 1},{lr:.6g},{loss:.6g},{s:.6g}" for i, (lr, loss, s)
                                             in enumerate(zip(result.lrs, result.losses, result.smoothed, strict=True))]
    (folder / "lr_find.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    files.write_json(folder / "lr_find.json", {"recipe": name, **result.to_dict()})
    draw(result, name).savefig(folder / "lr_find.png")


def draw(result: LRFindResult, name: str) -> Any:
    """The loss against the rate (log axis), the suggestion marked: a `matplotlib.figure.Figure`, for lr_find.png
    and for a notebook (`deepcourse.lr_find`)."""
    from deepcourse.figures import FIGSIZE, pyplot

    fig, ax = pyplot().subplots(figsize=FIGSIZE)
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.3, lw=1, label="loss at each step")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", lw=1.8, label="smoothed")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="tab:red", ls="--", lw=1,
                   label=f"suggested {result.suggestion:.2g} (steepest fall)")
        ax.axvline(result.min_loss_lr, color="grey", ls=":", lw=1, label=f"lowest loss, at {result.min_loss_lr:.2g}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    low = min([v for v in result.losses if math.isfinite(v)] + finite, default=None)
    if finite and low is not None:  # the divergence at the end would squash the interesting part
        ax.set_ylim(low - 0.05 * abs(low), min(max(finite), 2.5 * finite[0] + 1e-12) * 1.05)
    ax.set(title=f"{name}: learning-rate range test", xlabel="learning rate (log scale)", ylabel="training loss")
    ax.legend(fontsize=8)
    return fig
