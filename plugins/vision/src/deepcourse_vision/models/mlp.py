"""A fully connected network on the flattened image: the baseline every CNN lab starts by beating, and the network
the fully-connected and normalisation labs build from their own pieces (`linear`, `norm`, `activation` and
`dropout_layer` each take a student's `"lab:NAME"`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from deepcourse.api import MODELS, lab_choice, lab_layer

from ..layers import LAB, Activation, Dropout, PositiveInt, make_activation

if TYPE_CHECKING:  # a built-in name or "lab:NAME", checked when the recipe is validated
    MlpNorm = str
    Linear = str
    DropoutLayer = str
else:
    MlpNorm = lab_choice(Literal["batch", "layer", "none"], "layer", "batchnorm", "layernorm")
    Linear = lab_choice(Literal["torch"], "layer", "affine")
    DropoutLayer = lab_choice(Literal["torch"], "layer", "dropout")


def affine(linear: str, in_features: int, out_features: int, *, bias: bool) -> nn.Module:
    """torch's `nn.Linear`, or the lab's affine piece starting from the very weights `nn.Linear` would have drawn
    (transposed to the piece's in x out layout; a zero shift where the Linear has no bias): with one seed, a run
    with the student's affine and one with torch's start from the same point, and differ only by the piece."""
    torch_layer = nn.Linear(in_features, out_features, bias=bias)
    if not linear.startswith(LAB):
        return torch_layer
    with torch.random.fork_rng(devices=[]):  # the piece's own start draws nothing from the run's generator
        layer = lab_layer(linear, key="model.linear", in_features=in_features, out_features=out_features)
    with torch.no_grad():
        layer.get_parameter("w").copy_(torch_layer.weight.T)
        layer.get_parameter("b").copy_(torch_layer.bias if torch_layer.bias is not None else torch.zeros(out_features))
    return layer


@MODELS.register("mlp")
def mlp(num_classes: int, in_channels: int, image_size: int,
        hidden: list[PositiveInt] = [256, 128],  # noqa: B006 - read-only default
        norm: MlpNorm = "none", activation: Activation = "relu", dropout: Dropout = 0.0,
        linear: Linear = "torch", dropout_layer: DropoutLayer = "torch") -> nn.Module:
    """Flatten, then [Linear -> norm -> activation -> dropout] for each `hidden` width, then the class scores.

    linear: 'torch' (nn.Linear) or a lab affine piece 'lab:NAME' for every fully connected layer. norm: also a lab
    batchnorm or layernorm piece. dropout_layer: 'torch' (nn.Dropout) or a lab dropout piece, with p = `dropout`
    (a lab piece is used even at p = 0)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for h in hidden:
        layers.append(affine(linear, width, h, bias=norm == "none"))
        if norm.startswith(LAB):
            layers.append(lab_layer(norm, key="model.norm", features=h))
        elif norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        elif norm == "layer":
            layers.append(nn.LayerNorm(h))
        layers.append(make_activation(activation))
        if dropout_layer.startswith(LAB):
            layers.append(lab_layer(dropout_layer, key="model.dropout_layer", p=dropout))
        elif dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(affine(linear, width, num_classes, bias=True))
    return nn.Sequential(*layers)
