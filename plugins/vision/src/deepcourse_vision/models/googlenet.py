"""A small GoogLeNet (Szegedy et al. 2015) for 32 px images: the paper's nine Inception modules behind a single
3x3 convolution instead of the 224 px stem, without the auxiliary classifiers.

torchvision's `googlenet` is built for 224 px input with its stem and auxiliary heads, and hard-codes batch norm,
so the modules are written here; `width` scales every channel count to make it affordable on a CPU.
"""
from __future__ import annotations

import functools
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from deepcourse.api import MODELS

from ..layers import Activation, Dropout, Norm, PositiveInt, conv_norm_act

# Inception modules of the paper (table 1): 1x1, (3x3 reduce, 3x3), (5x5 reduce, 5x5), pool projection.
# "M" is a 3x3 stride-2 max pool.
MODULES: list[tuple[int, int, int, int, int, int] | str] = [
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
    (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "M",
    (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),
]


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1) concatenated on channels."""

    def __init__(self, in_channels: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int,
                 norm: Norm, activation: Activation, groups: int) -> None:
        super().__init__()
        conv = functools.partial(conv_norm_act, norm=norm, activation=activation, groups=groups)
        self.branch1 = conv(in_channels, c1, 1)
        self.branch3 = nn.Sequential(conv(in_channels, c3_reduce, 1), conv(c3_reduce, c3, 3))
        self.branch5 = nn.Sequential(conv(in_channels, c5_reduce, 1), conv(c5_reduce, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(in_channels, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


@MODELS.register("googlenet", aliases=("inception",))
def googlenet(num_classes: int, in_channels: int, width: Annotated[float, Field(gt=0, le=4)] = 1.0,
              stem_channels: PositiveInt = 192, norm: Norm = "batch", norm_groups: PositiveInt = 32,
              activation: Activation = "relu", dropout: Dropout = 0.4) -> nn.Module:
    """GoogLeNet's nine Inception modules behind a 3x3 stem, for 32 px images.

    Stem, Inception 3a-3b, pool, 4a-4e, pool, 5a-5b, global average pool, dropout, linear (6.2M parameters at
    width 1). width: multiplies every channel count (0.25 trains ~10x faster)."""
    def w(c: int) -> int:
        return max(1, round(c * width))

    layers: list[nn.Module] = [conv_norm_act(in_channels, w(stem_channels), 3, norm=norm, activation=activation,
                                             groups=norm_groups)]
    channels = w(stem_channels)
    for spec in MODULES:
        if isinstance(spec, str):  # "M"
            layers.append(nn.MaxPool2d(3, 2, 1))
            continue
        c1, c3_reduce, c3, c5_reduce, c5, pool_proj = (w(c) for c in spec)
        module = Inception(channels, c1, c3_reduce, c3, c5_reduce, c5, pool_proj, norm=norm, activation=activation,
                           groups=norm_groups)
        layers.append(module)
        channels = module.out_channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(channels, num_classes))
