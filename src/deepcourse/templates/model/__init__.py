"""${dist}: adds the model `${name}_net` (importing this module registers it)."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from deepcourse.api import MODELS


@MODELS.register("${name}_net")
def ${name}_net(num_classes: int, in_channels: int, image_size: int,
                width: Annotated[int, Field(gt=0)] = 64,
                dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1) -> nn.Module:
    """A small convolutional net: conv-BN-ReLU twice, global average pooling, a linear classifier.

    num_classes, in_channels and image_size come from the dataset; width and dropout from the recipe."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes))
