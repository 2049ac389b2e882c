"""What each kind of lab piece is checked against: torch's own layer, loss or optimizer on the same inputs.

A reference knows its piece's contract (the parameters' shapes, the `config` keys, the state it keeps), the cases the
checker tries (several shapes, and the edge cases a hand-written version gets wrong: a batch of one for batch norm,
p = 0 and p = 1 for dropout, stride and padding for the convolution, large scores for softmax), and how the engine
builds a trainable layer from a piece (`module_shapes`, `init`).

Every reference computes in float64 with torch's autograd, so its gradients are the ones a correct backward returns.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Case", "LayerReference", "LossReference", "UpdateReference", "LAYERS", "LOSSES", "UPDATES", "reference",
           "NORMS", "KINDS"]


@dataclass(frozen=True)
class Case:
    """One input the checker tries: a label for the table, the input's shape, the `config` the piece receives and
    the facts only the checker needs (`shape`: an output width, a kernel's shape)."""

    label: str
    x: tuple[int, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    shape: Mapping[str, Any] = field(default_factory=dict)


# -- layers ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerReference:
    """A layer: `forward(x, params[, config]) -> (out, cache)` and `backward(dout, cache) -> (dx, dparams)`."""

    name: str
    title: str
    #: torch's computation, differentiable: (x, params, config) -> out; may update state tensors held in config
    forward: Callable[[Tensor, dict[str, Tensor], dict[str, Any]], Tensor]
    #: (input shape, case shape facts) -> parameter name -> shape
    params: Callable[[tuple[int, ...], Mapping[str, Any]], dict[str, tuple[int, ...]]]
    cases: tuple[Case, ...]
    #: config keys the piece receives with their defaults; a layer without them is called as forward(x, params)
    config: Mapping[str, Any] = field(default_factory=dict)
    #: config entries the layer updates (running statistics), compared after the forward like outputs
    state: tuple[str, ...] = ()
    #: the module's constructor facts: keyword -> (param shapes, config) for `lab_layer(name, **facts)`
    module: Callable[..., tuple[dict[str, tuple[int, ...]], dict[str, Any]]] | None = None
    #: how a trainable layer's parameters start (name -> tensor); default: ones for gamma, zeros for beta and biases
    init: Callable[[dict[str, tuple[int, ...]]], dict[str, Tensor]] | None = None
    #: kinks (relu, max) are kept away from: inputs are drawn this far from them
    kinks: bool = False

    @property
    def takes_config(self) -> bool:
        return bool(self.config)

    def start_config(self, x_shape: tuple[int, ...], case: Case, generator: torch.Generator) -> dict[str, Any]:
        """The config a case passes: defaults, the case's values, and fresh state of the right size."""
        config = {**self.config, **case.config}
        if "running_mean" in self.state:
            width = x_shape[1]
            if config.get("mode") == "test":  # statistics a trained layer would hold
                config["running_mean"] = torch.randn(width, generator=generator, dtype=torch.float64)
                config["running_var"] = torch.rand(width, generator=generator, dtype=torch.float64) + 0.5
            else:
                config["running_mean"] = torch.zeros(width, dtype=torch.float64)
                config["running_var"] = torch.ones(width, dtype=torch.float64)
        return config


def _affine_forward(x: Tensor, p: dict[str, Tensor], c: dict[str, Any]) -> Tensor:
    return F.linear(x.reshape(x.shape[0], -1), p["w"].T, p["b"])


def _affine_init(shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """As `nn.Linear` starts: uniform in +-1/sqrt(fan_in) (its Kaiming-uniform with a = sqrt(5))."""
    fan_in = shapes["w"][0]
    bound = 1 / math.sqrt(fan_in)
    return {n: torch.empty(shapes[n]).uniform_(-bound, bound) for n in ("w", "b")}


def _batchnorm_forward(x: Tensor, p: dict[str, Tensor], c: dict[str, Any]) -> Tensor:
    # torch.batch_norm, not F.batch_norm: the functional refuses a batch of one in training, the edge case we check
    return torch.batch_norm(x, p["gamma"], p["beta"], c["running_mean"], c["running_var"], c["mode"] == "train",
                            c["momentum"], c["eps"], False)


def _conv_forward(x: Tensor, p: dict[str, Tensor], c: dict[str, Any]) -> Tensor:
    return F.conv2d(x, p["w"], p["b"], stride=c["stride"], padding=c["pad"])


def _conv_init(shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    fan_in = math.prod(shapes["w"][1:])
    bound = 1 / math.sqrt(fan_in)
    return {n: torch.empty(shapes[n]).uniform_(-bound, bound) for n in ("w", "b")}


def _norm_params(x: tuple[int, ...], s: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {"gamma": (x[1],), "beta": (x[1],)}


def _layernorm_params(x: tuple[int, ...], s: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {"gamma": (x[-1],), "beta": (x[-1],)}


def _norm_module(features: int, **config: Any) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    return {"gamma": (features,), "beta": (features,)}, config


_NORM_CONFIG = {"mode": "train", "eps": 1e-5}

LAYERS: dict[str, LayerReference] = {r.name: r for r in (
    LayerReference(
        "affine", "affine layer: out = x.reshape(N, -1) @ w + b (torch: nn.Linear)", _affine_forward,
        lambda x, s: {"w": (math.prod(x[1:]), s["out"]), "b": (s["out"],)},
        (Case("4x4 -> 4, square weights", (4, 4), shape={"out": 4}), Case("3x4 -> 5", (3, 4), shape={"out": 5}),
         Case("2x3x4 flattened -> 6", (2, 3, 4), shape={"out": 6}), Case("batch of one", (1, 7), shape={"out": 2})),
        module=lambda in_features, out_features: ({"w": (in_features, out_features), "b": (out_features,)}, {}),
        init=_affine_init),
    LayerReference(
        "relu", "ReLU: out = max(x, 0) (torch: nn.ReLU)", lambda x, p, c: torch.relu(x), lambda x, s: {},
        (Case("3x4", (3, 4)), Case("2x3x4x5", (2, 3, 4, 5))), module=lambda: ({}, {}), kinks=True),
    LayerReference(
        "batchnorm", "batch normalisation over the batch, per feature; running statistics as torch keeps them "
        "(momentum weighs the new batch, the running variance is unbiased) (torch: nn.BatchNorm1d)",
        _batchnorm_forward, _norm_params,
        (Case("4x5, training", (4, 5)), Case("batch of one, training", (1, 3)),
         Case("4x5, test mode (running statistics)", (4, 5), {"mode": "test"})),
        config={**_NORM_CONFIG, "momentum": 0.1}, state=("running_mean", "running_var"),
        module=lambda features, **_: _norm_module(features, **_NORM_CONFIG, momentum=0.1)),
    LayerReference(
        "layernorm", "layer normalisation over each example's features (torch: nn.LayerNorm)",
        lambda x, p, c: F.layer_norm(x, x.shape[-1:], p["gamma"], p["beta"], c["eps"]), _layernorm_params,
        (Case("4x5", (4, 5)), Case("batch of one", (1, 6)), Case("3x8", (3, 8))),
        config=_NORM_CONFIG, module=lambda features, **_: _norm_module(features, **_NORM_CONFIG)),
    LayerReference(
        "groupnorm", "group normalisation of N x C x H x W maps, config['groups'] groups of channels "
        "(torch: nn.GroupNorm)",
        lambda x, p, c: F.group_norm(x, c["groups"], p["gamma"], p["beta"], c["eps"]), _norm_params,
        (Case("2x6x4x5, 2 groups", (2, 6, 4, 5), {"groups": 2}),
         Case("a channel per group, batch of one", (1, 4, 3, 3), {"groups": 4}),
         Case("one group", (2, 3, 2, 2), {"groups": 1})),
        config={**_NORM_CONFIG, "groups": 2},
        module=lambda features, groups=32, **_: _norm_module(features, **_NORM_CONFIG, groups=_divisor(features,
                                                                                                       groups))),
    LayerReference(
        "dropout", "inverted dropout: drops each value with probability config['p'] and scales the kept ones by "
        "1 / (1 - p) in training; the identity in test mode; the mask drawn from config['seed'] "
        "(torch: nn.Dropout)",
        lambda x, p, c: x, lambda x, s: {},
        (Case("20x30, p = 0.3", (20, 30), {"p": 0.3}), Case("p = 0 keeps everything", (4, 5), {"p": 0.0}),
         Case("p = 1 drops everything", (4, 5), {"p": 1.0}),
         Case("test mode is the identity", (4, 5), {"p": 0.5, "mode": "test"})),
        config={"p": 0.5, "mode": "train", "seed": 0},
        module=lambda p=0.5: ({}, {"p": p, "mode": "train", "seed": 0})),
    LayerReference(
        "conv", "naive 2-d convolution of N x C x H x W by F x C x HH x WW filters, config['stride'] and "
        "config['pad'] (zero padding on every side) (torch: nn.Conv2d)",
        _conv_forward, lambda x, s: {"w": (s["filters"], x[1], *s["kernel"]), "b": (s["filters"],)},
        (Case("2x3x5x5, 3x3, stride 1, pad 1", (2, 3, 5, 5), {"stride": 1, "pad": 1},
              {"filters": 4, "kernel": (3, 3)}),
         Case("2x3x7x7, 3x3, stride 2, pad 1", (2, 3, 7, 7), {"stride": 2, "pad": 1},
              {"filters": 2, "kernel": (3, 3)}),
         Case("1x2x6x5, 2x3, stride 1, no padding", (1, 2, 6, 5), {"stride": 1, "pad": 0},
              {"filters": 3, "kernel": (2, 3)}),
         Case("1x1x4x4, 3x3, stride 3, pad 2", (1, 1, 4, 4), {"stride": 3, "pad": 2},
              {"filters": 2, "kernel": (3, 3)})),
        config={"stride": 1, "pad": 0},
        module=lambda in_channels, out_channels, kernel_size, stride=1, pad=0: (
            {"w": (out_channels, in_channels, kernel_size, kernel_size), "b": (out_channels,)},
            {"stride": stride, "pad": pad}),
        init=_conv_init),
    LayerReference(
        "maxpool", "max pooling of N x C x H x W maps over config['pool_height'] x config['pool_width'] windows "
        "every config['stride'] (torch: nn.MaxPool2d)",
        lambda x, p, c: F.max_pool2d(x, (c["pool_height"], c["pool_width"]), c["stride"]), lambda x, s: {},
        (Case("2x3x4x4, 2x2, stride 2", (2, 3, 4, 4), {"pool_height": 2, "pool_width": 2, "stride": 2}),
         Case("1x2x5x5, 3x3, stride 2", (1, 2, 5, 5), {"pool_height": 3, "pool_width": 3, "stride": 2}),
         Case("2x1x4x6, 2x3, stride 1 (overlapping)", (2, 1, 4, 6), {"pool_height": 2, "pool_width": 3, "stride": 1})),
        config={"pool_height": 2, "pool_width": 2, "stride": 2},
        module=lambda kernel_size=2, stride=None: ({}, {"pool_height": kernel_size, "pool_width": kernel_size,
                                                        "stride": stride or kernel_size}),
        kinks=True),
)}

#: the layers a model's `norm` option can take from a lab
NORMS = ("batchnorm", "layernorm", "groupnorm")


def _divisor(channels: int, groups: int) -> int:
    """The largest divisor of `channels` not above `groups` (GroupNorm needs groups | channels)."""
    return next(g for g in range(min(groups, channels), 0, -1) if channels % g == 0)


# -- losses ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossReference:
    """A loss: `loss(scores, y) -> (value, dscores)`, the mean over the batch."""

    name: str
    title: str
    value: Callable[[Tensor, Tensor], Tensor]
    cases: tuple[Case, ...]


LOSSES: dict[str, LossReference] = {r.name: r for r in (
    LossReference("softmax", "softmax (cross-entropy) loss, mean over the batch (torch: F.cross_entropy)",
                  lambda s, y: F.cross_entropy(s, y),
                  (Case("5 examples, 10 classes", (5, 10)), Case("batch of one", (1, 3)),
                   Case("large scores (overflow without the max subtracted)", (4, 6), shape={"scale": 1000.0}))),
    LossReference("svm", "multiclass SVM (hinge) loss with margin 1: the mean over examples of the sum over wrong "
                  "classes (torch: F.multi_margin_loss times the number of classes)",
                  lambda s, y: F.multi_margin_loss(s, y, margin=1.0) * s.shape[1],
                  (Case("5 examples, 10 classes", (5, 10)), Case("batch of one", (1, 3)),
                   Case("50 examples, 4 classes", (50, 4)))),
)}


# -- update rules ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpdateReference:
    """An update rule: `step(w, dw, config) -> (w, config)`, state kept in config between steps."""

    name: str
    title: str
    #: config keys the rule reads, with the values the checker uses (and the recipe defaults)
    hyper: Mapping[str, float]
    #: the torch optimizer for a config
    torch: Callable[[list[Tensor], Mapping[str, Any]], torch.optim.Optimizer]
    #: state key in config -> (torch's state key, how to read ours from theirs)
    state: Mapping[str, tuple[str, Callable[[Tensor, Mapping[str, Any]], Tensor]]]


UPDATES: dict[str, UpdateReference] = {r.name: r for r in (
    UpdateReference("sgd", "vanilla SGD: w -= learning_rate * dw (torch: optim.SGD)", {"learning_rate": 0.1},
                    lambda ps, c: torch.optim.SGD(ps, lr=c["learning_rate"]), {}),
    UpdateReference("sgd_momentum", "SGD with momentum: v = momentum * v - learning_rate * dw; w += v "
                    "(torch: optim.SGD(momentum=...), whose buffer is -v / learning_rate)",
                    {"learning_rate": 0.05, "momentum": 0.9},
                    lambda ps, c: torch.optim.SGD(ps, lr=c["learning_rate"], momentum=c["momentum"]),
                    {"velocity": ("momentum_buffer", lambda t, c: -c["learning_rate"] * t)}),
    UpdateReference("rmsprop", "RMSprop: cache = decay_rate * cache + (1 - decay_rate) * dw**2; "
                    "w -= learning_rate * dw / (sqrt(cache) + epsilon) (torch: optim.RMSprop)",
                    {"learning_rate": 0.01, "decay_rate": 0.99, "epsilon": 1e-8},
                    lambda ps, c: torch.optim.RMSprop(ps, lr=c["learning_rate"], alpha=c["decay_rate"],
                                                      eps=c["epsilon"]),
                    {"cache": ("square_avg", lambda t, c: t)}),
    UpdateReference("adam", "Adam with bias correction: m, v the moving averages of dw and dw**2, t the step count "
                    "(torch: optim.Adam)",
                    {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
                    lambda ps, c: torch.optim.Adam(ps, lr=c["learning_rate"], betas=(c["beta1"], c["beta2"]),
                                                   eps=c["epsilon"]),
                    {"m": ("exp_avg", lambda t, c: t), "v": ("exp_avg_sq", lambda t, c: t),
                     "t": ("step", lambda t, c: t)}),
)}

KINDS: dict[str, Mapping[str, Any]] = {"layer": LAYERS, "loss": LOSSES, "update": UPDATES}


def reference(kind: str, name: str) -> LayerReference | LossReference | UpdateReference:
    """The reference `name` of a kind ('layer', 'loss', 'update'); KeyError names the known ones."""
    table = KINDS[kind]
    if name not in table:
        raise KeyError(f"no {kind} reference '{name}'; known: {', '.join(table)}")
    found: LayerReference | LossReference | UpdateReference = table[name]
    return found
