"""Data-dependent initialization: modules that set their weights from a sample of the training data.

A whitening layer (its filters from the eigenvectors of the input patches' covariance, as in airbench) or an
LSUV-style layer (weights rescaled until its outputs have unit variance) cannot be initialised from a formula: it
needs to see real inputs. Any module of a model may ask for them by defining `init_from_data(self, x)` (see
`DataInit`). Before a new run trains, `init_from_data` below draws a fixed sample of the training split (the recipe's
seed, so every process draws the same one and initialises the same weights), runs it through the task's
`evaluation_step` once, in eval mode and without gradients (no augmentation, no batch-norm statistics updated), and
hands each asking module its own input just before its forward runs. Modules are thus initialised in forward order,
each seeing the input the modules before it, already initialised, produce; once the last has been, the forward
stops there (a whitening first layer costs one layer's forward, not the whole net's).

A resumed run takes its weights from the checkpoint and inference from the trained weights: neither calls this.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from accelerate.utils import send_to_device
from torch import nn
from torch.utils.data import DataLoader

from deepcourse.data import passthrough_collate
from deepcourse.errors import UserError
from deepcourse.task import DataBundle, Task

#: training samples drawn when no asking module sets `init_samples`
DEFAULT_SAMPLES = 1024


@runtime_checkable
class DataInit(Protocol):
    """A module initialised from training data before a new run trains.

    `init_from_data(x)` receives the first positional input the module receives in forward, for a fixed sample of
    the training split (its size: the largest `init_samples` of the model's asking modules, default 1024, at most
    the split's size), on the training device, under `torch.no_grad()` and with the model in eval mode. It sets the
    module's parameters in place (and may set `requires_grad = False` on those it freezes); a UserError it raises
    stops the run before anything is written (exit 2)."""

    def init_from_data(self, x: torch.Tensor) -> None: ...


def asking_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module that defines `init_from_data`, in registration order."""
    return [(name or type(model).__name__, m) for name, m in model.named_modules()
            if callable(getattr(m, "init_from_data", None))]


def init_from_data(model: nn.Module, task: Task, bundle: DataBundle, *, seed: int, device: torch.device) -> None:
    """Initialise the model's asking modules from a sample of `bundle`'s training split (nothing when none asks)."""
    asking = asking_modules(model)
    if not asking:
        return
    train = bundle.splits["train"]
    n = min(len(train), max(int(getattr(m, "init_samples", DEFAULT_SAMPLES)) for _, m in asking))
    picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    loader = DataLoader(train, batch_size=n, sampler=picked.tolist(), collate_fn=bundle.collate_fn or
                        passthrough_collate)
    batch = send_to_device(next(iter(loader)), device)
    model.to(device)
    pending = {name for name, _ in asking}
    hooks = [m.register_forward_pre_hook(_hook(name, pending)) for name, m in asking]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            task.evaluation_step(model, batch)
    except _AllInitialised:
        pass
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if pending:
        raise UserError(f"model: module {', '.join(sorted(pending))} defines init_from_data but the task's "
                        f"evaluation_step never ran its forward, so it was not initialised from data")


def _hook(name: str, pending: set[str]) -> Any:
    """A forward pre-hook that hands the module its first input once; a UserError it raises names the module."""
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if name not in pending:
            return
        pending.discard(name)
        if not args or not isinstance(args[0], torch.Tensor):
            raise UserError(f"model: module {name} defines init_from_data, but its forward's first positional "
                            f"input is not a tensor")
        try:
            module.init_from_data(args[0])  # type: ignore[operator]  # asking_modules found it callable
        except UserError as exc:
            raise UserError(f"model: {name}.init_from_data: {exc}") from None
        if not pending:
            raise _AllInitialised
    return hook


class _AllInitialised(Exception):
    """Raised by the last hook: the rest of the forward is not needed."""
