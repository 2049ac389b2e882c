"""The first seed lab's CNN: a stack of convolution -> pooling -> sigmoid stages and one linear layer.

It is deliberately old-fashioned (sigmoid, no normalisation) so the lab can show why ReLU and batch norm won; the
options let the same recipe switch them on.
"""
from __future__ import annotations

from torch import nn

from deepcourse.api import MODELS

from ..layers import (
    Activation,
    ConvClassifier,
    Dropout,
    NonNegInt,
    Norm,
    Pool,
    PositiveInt,
    feature_shape,
    make_activation,
    make_norm,
    make_pool,
    mlp_head,
)


@MODELS.register("simple_cnn")
def simple_cnn(num_classes: int, in_channels: int, image_size: int,
               channels: list[PositiveInt] = [16, 32],  # noqa: B006 - read-only default
               kernel_size: PositiveInt = 5, activation: Activation = "sigmoid", pool: Pool = "max",
               norm: Norm = "none", norm_groups: PositiveInt = 32, hidden: NonNegInt = 0,
               dropout: Dropout = 0.0) -> nn.Module:
    """The first seed lab's conv-pool-sigmoid stack, then a linear layer.

    One stage per entry of `channels` ('same' padding, 2x2 pooling), then a linear layer (with a `hidden` layer
    first when > 0). `norm` goes between each convolution and its pooling."""
    layers: list[nn.Module] = []
    width = in_channels
    for out in channels:
        layers += [nn.Conv2d(width, out, kernel_size, padding=kernel_size // 2, bias=norm in ("none", "lrn")),
                   make_norm(norm, out, groups=norm_groups), make_pool(pool, 2), make_activation(activation)]
        width = out
    features = nn.Sequential(*layers)
    flat = feature_shape(features, in_channels, image_size, "simple_cnn").numel()
    head = mlp_head(flat, [hidden] if hidden else [], num_classes, activation=activation, dropout=dropout,
                    dropout_first=True)
    return ConvClassifier(features, head)
