"""Hand-written pieces as autograd functions and modules, so the engine trains them like built-in ones.

`lab_layer(name, **facts)` builds an `nn.Module` from a registered layer (its parameters start as torch's layer's
do); `lab_loss(name)` a loss function. The forward pass calls the piece's `forward`, the backward pass its `backward`:
autograd never sees inside, exactly as in the exercise. Arrays cross to numpy on the host for numpy pieces (a copy
per call: a lab costs host time, not correctness).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepcourse.lab.convert import from_array, to_array
from deepcourse.lab.pieces import Piece, PieceError, piece
from deepcourse.lab.references import LayerReference

__all__ = ["LabLayer", "lab_layer", "lab_loss", "split_backward"]


def split_backward(p: Piece, returned: Any, names: list[str]) -> tuple[Any, dict[str, Any]]:
    """(dx, dparams) from what a layer's backward returned, or a PieceError saying what was expected."""
    if not names and not isinstance(returned, tuple):
        return returned, {}
    if not (isinstance(returned, tuple) and len(returned) == 2):
        got = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else type(returned).__name__
        raise PieceError(f"lab layer '{p.name}': backward ({p.where('backward')}) returned {got}; expected "
                         f"(dx, dparams) with dparams a dict of {', '.join(names) or 'nothing'}")
    dx, dparams = returned
    if not names and dparams in (None, {}):
        return dx, {}
    if not isinstance(dparams, dict) or set(dparams) != set(names):
        shown = sorted(dparams) if isinstance(dparams, dict) else type(dparams).__name__
        raise PieceError(f"lab layer '{p.name}': backward ({p.where('backward')}) returned dparams {shown}; expected a "
                         f"dict with the keys {', '.join(names) or '(none)'}")
    return dx, dparams


def split_pair(p: Piece, fn: str, returned: Any, expected: str, *, dict_second: bool = False) -> tuple[Any, Any]:
    """What a piece's `fn` returned, checked to be the pair `expected` names ('(out, cache)'; with `dict_second`
    its second item a dict), or a PieceError naming the piece, where its function is, and what was expected."""
    if isinstance(returned, tuple) and len(returned) == 2 and (not dict_second or isinstance(returned[1], dict)):
        return returned
    got = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else type(returned).__name__
    kind = {"update": "update rule"}.get(p.kind, p.kind)
    raise PieceError(f"lab {kind} '{p.name}': {fn} ({p.where(fn)}) returned {got}; expected {expected}")


def split_forward(p: Piece, returned: Any) -> tuple[Any, Any]:
    return split_pair(p, "forward", returned, "(out, cache)")


class _LayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, layer: LabLayer, config: dict[str, Any], x: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        p, kind = layer.piece, layer.piece.array
        arrays = {name: to_array(t, kind) for name, t in zip(layer.names, params)}
        args = (to_array(x, kind), arrays, config) if layer.reference.takes_config else (to_array(x, kind), arrays)
        out, ctx.cache = split_forward(p, p.functions["forward"](*args))
        ctx.layer, ctx.shapes = layer, (x, *params)
        return from_array(out, like=x, what=f"lab layer '{p.name}': out")

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[Any, ...]:
        layer: LabLayer = ctx.layer
        p, x, params = layer.piece, ctx.shapes[0], ctx.shapes[1:]
        dx, dparams = split_backward(p, p.functions["backward"](to_array(dout, p.array), ctx.cache), layer.names)
        grads = [from_array(dx, like=x, what=f"lab layer '{p.name}': dx")]
        grads += [from_array(dparams[n], like=t, what=f"lab layer '{p.name}': dparams['{n}']")
                  for n, t in zip(layer.names, params)]
        for name, g, t in zip(["dx", *layer.names], grads, (x, *params)):
            if g.shape != t.shape:
                raise PieceError(f"lab layer '{p.name}': backward returned {name} of shape {tuple(g.shape)}; expected "
                                 f"{tuple(t.shape)}, the shape of {'x' if name == 'dx' else name}")
        return (None, None, *grads)


class LabLayer(nn.Module):
    """A registered lab layer with its parameters and state as a module: trains, saves and loads like any other."""

    def __init__(self, p: Piece, /, **facts: Any) -> None:  # positional: dropout's fact is `p` too
        super().__init__()
        p.require_valid()
        ref = p.reference
        assert isinstance(ref, LayerReference) and ref.module is not None
        try:
            shapes, self.config = ref.module(**facts)
        except TypeError as exc:
            raise PieceError(f"lab layer '{p.name}' ({ref.name}): cannot be built with {facts} ({exc})") from None
        self.piece, self.reference = p, ref
        start = ref.init(shapes) if ref.init else {
            n: torch.ones(s) if n == "gamma" else torch.zeros(s) for n, s in shapes.items()}
        self.names = list(start)
        for n, t in start.items():
            self.register_parameter(n, nn.Parameter(t))
        if ref.state:
            self.register_buffer("running_mean", torch.zeros(shapes["gamma"]))
            self.register_buffer("running_var", torch.ones(shapes["gamma"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ref, name = self.reference, self.piece.name
        if ref.name == "batchnorm" and x.dim() == 4:  # spatial batch norm: every pixel is an example of C features
            n, c, h, w = x.shape
            flat = self.forward(x.permute(0, 2, 3, 1).reshape(-1, c))
            return flat.reshape(n, h, w, c).permute(0, 3, 1, 2)
        if ref.name in ("batchnorm", "layernorm") and x.dim() != 2:
            raise PieceError(f"lab layer '{name}' ({ref.name}) normalises N x D features; it got {x.dim()}-d input "
                             f"(use a groupnorm piece for feature maps)")
        if ref.name == "groupnorm" and x.dim() != 4:
            raise PieceError(f"lab layer '{name}' (groupnorm) normalises N x C x H x W maps; it got {x.dim()}-d input")
        config = dict(self.config)
        if "mode" in config:
            config["mode"] = "train" if self.training else "test"
        if "seed" in config:  # dropout: a fresh mask each call, drawn from torch's generator (reproducible runs)
            config["seed"] = int(torch.randint(2**31 - 1, (1,)).item())  # host-side draw on the CPU generator
        if self.reference.state:
            assert isinstance(self.running_mean, torch.Tensor) and isinstance(self.running_var, torch.Tensor)
            config["running_mean"] = to_array(self.running_mean, self.piece.array, copy=True)
            config["running_var"] = to_array(self.running_var, self.piece.array, copy=True)
        out = _LayerFunction.apply(self, config, x, *[getattr(self, n) for n in self.names])
        if self.reference.state and self.training:
            with torch.no_grad():
                for key in ("running_mean", "running_var"):
                    buffer = getattr(self, key)
                    buffer.copy_(from_array(config[key], like=buffer, what=f"lab layer '{name}': {key}"))
        return out

    def extra_repr(self) -> str:
        return f"lab:{self.piece.name} ({self.reference.name}, {self.piece.array})"


def lab_layer(name: str, *, key: str = "", **facts: Any) -> LabLayer:
    """A module from the registered lab layer `name` ('lab:' optional). `facts` size it: `in_features` and
    `out_features` (affine), `features` (normalisations; `groups` for groupnorm), `p` (dropout), `in_channels`,
    `out_channels`, `kernel_size`, `stride`, `pad` (conv), `kernel_size`, `stride` (maxpool). `key` is the recipe key
    that named it, for messages."""
    return LabLayer(piece(name, "layer", key=key), **facts)


class _LossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, p: Piece, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        returned = p.functions["loss"](to_array(scores, p.array), to_array(y, p.array))
        value, dscores = split_pair(p, "loss", returned, "(value, dscores)")
        ctx.dscores = from_array(dscores, like=scores, what=f"lab loss '{p.name}': dscores")
        return torch.as_tensor(float(value), dtype=scores.dtype, device=scores.device)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return None, ctx.dscores * grad, None


def lab_loss(name: str, *, key: str = "") -> Any:
    """The registered lab loss `name` as a function (scores, y) -> scalar tensor that autograd can differentiate."""
    p = piece(name, "loss", key=key)
    p.require_valid()

    def loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _LossFunction.apply(p, scores, y)

    loss.__name__ = f"lab:{p.name}"
    return loss
