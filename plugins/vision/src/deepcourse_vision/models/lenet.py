"""LeNet-5 (LeCun et al. 1998) and the course lab's CIFAR-10 variant of it.

`lenet5` is the classic two-convolution layout (61.7k parameters on MNIST); its options cover what the labs vary:
activation, pooling, normalisation, dropout, the first kernel (e.g. 11 with padding 5) and the widths (Caffe's
20/50-channel LeNet is `channels = [20, 50]`). `lenet5_lab` is the seed lab's three-3x3-convolution variant.
"""
from __future__ import annotations

from collections.abc import Sequence

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


def _stage(in_channels: int, out_channels: int, kernel_size: int, padding: int, norm: Norm, groups: int,
           activation: Activation, pool: nn.Module) -> list[nn.Module]:
    """conv -> norm -> activation -> pool: one LeNet stage."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=norm in ("none", "lrn")),
            make_norm(norm, out_channels, groups=groups), make_activation(activation), pool]


def _lenet(name: str, stages: Sequence[list[nn.Module]], in_channels: int, image_size: int, hidden: Sequence[int],
           num_classes: int, activation: Activation, dropout: float) -> ConvClassifier:
    features = nn.Sequential(*[layer for stage in stages for layer in stage])
    flat = feature_shape(features, in_channels, image_size, name).numel()
    return ConvClassifier(features, mlp_head(flat, hidden, num_classes, activation=activation, dropout=dropout))


@MODELS.register("lenet5", aliases=("lenet",))
def lenet5(num_classes: int, in_channels: int, image_size: int,
           channels: tuple[PositiveInt, PositiveInt] = (6, 16), hidden: tuple[PositiveInt, PositiveInt] = (120, 84),
           kernel_size: PositiveInt = 5, padding: NonNegInt | None = None, activation: Activation = "relu",
           pool: Pool = "max", norm: Norm = "none", norm_groups: PositiveInt = 32,
           dropout: Dropout = 0.0) -> nn.Module:
    """Classic LeNet-5: conv(k) -> pool -> conv 5x5 -> pool -> fc -> fc -> classes.

    padding (of the first convolution): default 'same' padding for images under 32 px, so 28 px MNIST reaches
    the second stage at the size LeNet's 32 px input had, and none from 32 px on; both give 61.7k parameters.
    dropout: after each hidden fully connected layer. norm: after each convolution."""
    if padding is None:
        padding = (kernel_size - 1) // 2 if image_size < 32 else 0
    stages = [_stage(in_channels, channels[0], kernel_size, padding, norm, norm_groups, activation, make_pool(pool, 2)),
              _stage(channels[0], channels[1], 5, 0, norm, norm_groups, activation, make_pool(pool, 2))]
    return _lenet("lenet5", stages, in_channels, image_size, hidden, num_classes, activation, dropout)


@MODELS.register("lenet5_lab")
def lenet5_lab(num_classes: int, in_channels: int, image_size: int,
               channels: tuple[PositiveInt, PositiveInt, PositiveInt] = (6, 16, 120),
               hidden: tuple[PositiveInt, PositiveInt] = (120, 84), activation: Activation = "relu",
               norm: Norm = "batch", norm_groups: PositiveInt = 32, dropout: Dropout = 0.0) -> nn.Module:
    """The first course lab's LeNet-5 variant for CIFAR-10 (260k parameters with batch norm).

    3x3 convolutions 6-16-120 without padding, max-pool 2 after the first and 3/2 after the second, then fully
    connected 1920-120-84-classes (260k parameters with batch norm)."""
    stages = [_stage(in_channels, channels[0], 3, 0, norm, norm_groups, activation, nn.MaxPool2d(2)),
              _stage(channels[0], channels[1], 3, 0, norm, norm_groups, activation, nn.MaxPool2d(3, 2)),
              _stage(channels[1], channels[2], 3, 0, norm, norm_groups, activation, nn.Identity())]
    return _lenet("lenet5_lab", stages, in_channels, image_size, hidden, num_classes, activation, dropout)
