"""A hand-written update rule as a `torch.optim.Optimizer`, so a recipe trains with it: `optimizer.name = "lab:NAME"`.

Each parameter keeps its own `config` (the rule's state: velocity, moving averages, step count) in the optimizer's
state as tensors, so checkpoints save and resume it like any optimizer's. The learning rate is the parameter group's
`lr`, so every schedule drives a lab rule as it drives torch's.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from deepcourse.lab.convert import from_array, to_array
from deepcourse.lab.modules import split_pair
from deepcourse.lab.pieces import PREFIX, Piece, PieceError
from deepcourse.registry import OPTIMIZERS

__all__ = ["LabOptimizer", "register_optimizer"]

Lr = Annotated[float, Field(gt=0)]
Rate = Annotated[float, Field(ge=0, lt=1)]
Eps = Annotated[float, Field(gt=0)]


class LabOptimizer(torch.optim.Optimizer):
    """Runs `piece`'s `step(w, dw, config)` on every parameter with a gradient."""

    def __init__(self, params: Iterable[Any], piece: Piece, lr: float, **hyper: float) -> None:
        piece.require_valid()
        self.piece = piece
        super().__init__(params, {"lr": lr, **hyper})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rule = self.piece.functions["step"]
        for group in self.param_groups:
            hyper = {k: v for k, v in group.items() if k not in ("params", "lr")}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                kind = self.piece.array
                config: dict[str, Any] = {"learning_rate": group["lr"], **hyper}
                config.update({k: to_array(v, kind) if isinstance(v, torch.Tensor) else v for k, v in state.items()})
                returned = rule(to_array(p, kind, copy=True), to_array(p.grad, kind), config)
                w, config = split_pair(self.piece, "step", returned, "(w, config) with config a dict",
                                       dict_second=True)
                new = from_array(w, like=p, what=f"lab update rule '{self.piece.name}': w")
                if new.shape != p.shape:
                    raise PieceError(f"lab update rule '{self.piece.name}' returned w of shape {tuple(new.shape)} "
                                     f"for a parameter of shape {tuple(p.shape)}")
                p.copy_(new)
                for key, value in config.items():
                    if key == "learning_rate" or key in hyper:
                        continue
                    state[key] = torch.as_tensor(np.asarray(value)).clone() if isinstance(
                        value, np.ndarray | torch.Tensor) else value
        return loss


# One builder per reference: its signature is the recipe's `[optimizer]` table (validated like any optimizer's).
# (templates: only their signatures are read)
def _sgd(params: Iterable[Any], lr: Lr = 0.1) -> None: ...
def _sgd_momentum(params: Iterable[Any], lr: Lr = 0.01, momentum: Rate = 0.9) -> None: ...
def _rmsprop(params: Iterable[Any], lr: Lr = 0.01, decay_rate: Rate = 0.99, epsilon: Eps = 1e-8) -> None: ...
def _adam(params: Iterable[Any], lr: Lr = 1e-3, beta1: Rate = 0.9, beta2: Rate = 0.999,
          epsilon: Eps = 1e-8) -> None: ...


_SIGNATURES = {"sgd": _sgd, "sgd_momentum": _sgd_momentum, "rmsprop": _rmsprop, "adam": _adam}


def register_optimizer(piece: Piece) -> None:
    """Register `lab:NAME` among the optimizers, with the hyperparameters of the piece's reference as its keys."""
    template = _SIGNATURES[piece.reference_name]

    signature = inspect.signature(template)

    def build(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()  # a call from Python gets the same defaults as a recipe
        values = dict(bound.arguments)
        return LabOptimizer(values.pop("params"), piece, values.pop("lr"), **values)

    build.__signature__ = signature  # type: ignore[attr-defined]
    build.__annotations__ = dict(template.__annotations__)
    build.__doc__ = f"Lab update rule '{piece.name}' ({piece.reference_name}), hand-written."
    build.__module__ = piece.__module__  # credited to the student's plugin
    build.__qualname__ = f"{PREFIX}{piece.name}"
    OPTIMIZERS.register(f"{PREFIX}{piece.name}", build, override=True)

