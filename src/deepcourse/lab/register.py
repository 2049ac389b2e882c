"""Registering a hand-written piece: `layer`, `loss` and `update_rule`, what a student's plugin calls.

An update rule is also registered among the optimizers as `lab:NAME`, so a recipe trains with it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deepcourse.lab.optimizer import register_optimizer
from deepcourse.lab.pieces import PREFIX, Kind, Piece
from deepcourse.lab.references import KINDS
from deepcourse.registry import PIECES

__all__ = ["layer", "loss", "update_rule"]


def _register(name: str, kind: Kind, reference: str, functions: dict[str, Callable[..., Any]], array: str,
              module: str | None) -> Piece:
    table = KINDS[kind]
    if reference not in table:
        from deepcourse.errors import did_you_mean

        raise ValueError(f"lab {kind} '{name}': unknown reference '{reference}'.{did_you_mean(reference, list(table))}"
                         f" Known: {', '.join(table)}")
    if array not in ("numpy", "torch"):
        raise ValueError(f"lab {kind} '{name}': array must be 'numpy' or 'torch', not {array!r}")
    if name.startswith(PREFIX):
        name = name[len(PREFIX):]
    made = Piece(name, kind, reference, functions, array)  # type: ignore[arg-type]
    # credited to the module that defines the functions: the student's plugin, not deepcourse
    object.__setattr__(made, "__module__", module or getattr(next(iter(functions.values())), "__module__", "?"))
    PIECES.register(name, made)
    if kind == "update":
        register_optimizer(made)
    return made


def layer(name: str, forward: Callable[..., Any], backward: Callable[..., Any], *, reference: str,
          array: str = "numpy") -> Piece:
    """Register a layer: `forward(x, params[, config]) -> (out, cache)`, `backward(dout, cache) -> (dx, dparams)`.

    `params` and `dparams` are dicts with the reference's names (`w`, `b`; `gamma`, `beta`); layers with a `config`
    (normalisations, dropout, convolution, pooling) take it as forward's third argument and may update its state
    (running statistics) in place. A layer without parameters returns `dx` alone or `(dx, {})`."""
    return _register(name, "layer", reference, {"forward": forward, "backward": backward}, array,
                     getattr(forward, "__module__", None))


def loss(name: str, fn: Callable[..., Any], *, reference: str, array: str = "numpy") -> Piece:
    """Register a loss: `loss(scores, y) -> (value, dscores)`, scores N x C, y N class indices, value the batch mean."""
    return _register(name, "loss", reference, {"loss": fn}, array, getattr(fn, "__module__", None))


def update_rule(name: str, fn: Callable[..., Any], *, reference: str, array: str = "numpy") -> Piece:
    """Register an update rule: `step(w, dw, config) -> (w, config)`. config holds the hyperparameters
    (`learning_rate`, ...) and whatever state the rule keeps between steps (`velocity`, `m`, `v`, `t`, ...).
    A recipe trains with it as `optimizer.name = "lab:NAME"`."""
    return _register(name, "update", reference, {"step": fn}, array, getattr(fn, "__module__", None))


