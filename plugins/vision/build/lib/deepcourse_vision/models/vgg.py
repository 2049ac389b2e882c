"""VGG-11/13/16/19 (Simonyan & Zisserman 2015), with or without batch norm (any `norm`).

The layer tables are torchvision's (`torchvision.models.vgg.cfgs`); the layers are built here so `norm` can be any
of the CNN norms. head 'imagenet' is torchvision's classifier (7x7 average pool, 4096-4096 with dropout): with
norm 'none' the parameter count equals torchvision's vgg*. head 'cifar' is the usual small-image head: global
average pool and one linear layer (a 32 px image is 1x1 after the five poolings anyway).
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from deepcourse.api import MODELS

from ..layers import Dropout, Norm, PositiveInt, conv_norm_act, mlp_head

Head = Literal["auto", "imagenet", "cifar"]


def _vgg(config: str, num_classes: int, in_channels: int, image_size: int, norm: Norm, norm_groups: int,
         head: Head, dropout: float) -> nn.Module:
    from torchvision.models.vgg import cfgs

    layers: list[nn.Module] = []
    width = in_channels
    for v in cfgs[config]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(conv_norm_act(width, int(v), 3, padding=1, norm=norm, groups=norm_groups))
            width = int(v)
    if head == "auto":
        head = "imagenet" if image_size >= 128 else "cifar"
    if head == "imagenet":
        classifier = nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                                   mlp_head(512 * 7 * 7, [4096, 4096], num_classes, dropout=dropout))
    else:
        classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                   nn.Linear(512, num_classes))
    return nn.Sequential(nn.Sequential(*layers), classifier)


def _builder(name: str, config: str, depth: int) -> None:
    def build(num_classes: int, in_channels: int, image_size: int, norm: Norm = "batch",
              norm_groups: PositiveInt = 32, head: Head = "auto", dropout: Dropout = 0.5) -> nn.Module:
        return _vgg(config, num_classes, in_channels, image_size, norm, norm_groups, head, dropout)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"VGG-{depth}: 3x3 convolutions in five pooled blocks, with or without batch norm.\n\n"
                     f"norm 'batch' (default) is torchvision's vgg{depth}_bn layout, 'none' plain vgg{depth}; "
                     f"head 'auto' is 'cifar' under 128 px.")
    MODELS.register(name, build)


for _name, _config, _depth in (("vgg11", "A", 11), ("vgg13", "B", 13), ("vgg16", "D", 16), ("vgg19", "E", 19)):
    _builder(_name, _config, _depth)
