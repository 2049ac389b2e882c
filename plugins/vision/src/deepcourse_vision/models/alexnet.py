"""AlexNet (Krizhevsky, Sutskever & Hinton 2012): the full 227x227 layout and a small variant for 28-32 px images.

Both keep what the lab discusses: ReLU, Local Response Normalisation after the first two convolutions, overlapping
3/2 max-pooling and dropout in the classifier. torchvision's `alexnet` is the later "one weird trick" layout
(64-192 channels, no LRN), so it is not reused here. The single-tower form is used (no two-GPU grouping).
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from deepcourse.api import MODELS

from ..layers import (
    Activation,
    ConvClassifier,
    Dropout,
    Norm,
    PositiveInt,
    feature_shape,
    make_activation,
    make_norm,
    mlp_head,
)

# (out channels, kernel, stride, padding, max-pool after) per convolution
FULL = [(96, 11, 4, 0, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False), (384, 3, 1, 1, False),
        (256, 3, 1, 1, True)]
SMALL = [(64, 5, 1, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False), (256, 3, 1, 1, False),
         (256, 3, 1, 1, True)]


@MODELS.register("alexnet")
def alexnet(num_classes: int, in_channels: int, image_size: int,
            variant: Literal["auto", "full", "small"] = "auto", norm: Norm = "lrn", norm_groups: PositiveInt = 32,
            activation: Activation = "relu", dropout: Dropout = 0.5, hidden: PositiveInt | None = None
            ) -> nn.Module:
    """AlexNet with LRN and dropout: the full 227 px layout or a small one for 28-32 px images.

    variant 'full': 96-256-384-384-256 channels, 11x11 stride-4 first layer, for 227 px input (62.4M
    parameters with 1000 classes); 'small': 64-192-384-256-256 channels with 5x5 then 3x3 kernels and padded
    pooling, for 28-32 px images; 'auto' picks small under 64 px. norm 'lrn' follows the paper (after the ReLU of
    the first two convolutions); any other norm goes after every convolution. hidden: width of the two fully
    connected layers (default 4096 full, 1024 small); dropout before each of them."""
    if variant == "auto":
        variant = "small" if image_size < 64 else "full"
    layers: list[nn.Module] = []
    width = in_channels
    for i, (out, kernel, stride, padding, pool) in enumerate(FULL if variant == "full" else SMALL):
        layers.append(nn.Conv2d(width, out, kernel, stride, padding, bias=norm in ("none", "lrn")))
        if norm not in ("lrn", "none"):
            layers.append(make_norm(norm, out, groups=norm_groups))
        layers.append(make_activation(activation))
        if norm == "lrn" and i < 2:
            layers.append(make_norm("lrn", out))
        if pool:
            layers.append(nn.MaxPool2d(3, 2, padding=0 if variant == "full" else 1))
        width = out
    features = nn.Sequential(*layers)
    flat = feature_shape(features, in_channels, image_size, "alexnet").numel()
    hidden = hidden or (4096 if variant == "full" else 1024)
    return ConvClassifier(features, mlp_head(flat, [hidden, hidden], num_classes, activation=activation,
                                             dropout=dropout, dropout_first=True))
