"""A fully connected network on the flattened image: the baseline every CNN lab starts by beating."""
from __future__ import annotations

from typing import Literal

from torch import nn

from deepcourse.api import MODELS

from ..layers import Activation, Dropout, PositiveInt, make_activation


@MODELS.register("mlp")
def mlp(num_classes: int, in_channels: int, image_size: int,
        hidden: list[PositiveInt] = [256, 128],  # noqa: B006 - read-only default
        norm: Literal["batch", "layer", "none"] = "none", activation: Activation = "relu",
        dropout: Dropout = 0.0) -> nn.Module:
    """Flatten, then [Linear -> norm -> activation -> dropout] for each `hidden` width, then the class scores."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=norm == "none"))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        elif norm == "layer":
            layers.append(nn.LayerNorm(h))
        layers.append(make_activation(activation))
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
