"""DenseNet (Huang et al. 2017) on torchvision's implementation: DenseNet-121 and a small DenseNet for 32 px.

torchvision's `DenseNet` takes growth rate, block depths and initial width, so it is reused; its batch norms are
swapped for the recipe's `norm` afterwards and, for small images, its 7x7 stride-2 stem and max-pool for one
3x3 convolution (as for ResNet).
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from deepcourse.api import MODELS

from ..layers import Dropout, Norm, PositiveInt, replace_batchnorm
from ..pretrained import Weights, with_weights

Stem = Literal["auto", "imagenet", "cifar"]


def _densenet(num_classes: int, in_channels: int, image_size: int, growth_rate: int, block_config: tuple[int, ...],
              num_init_features: int, stem: Stem, norm: Norm, norm_groups: int, drop_rate: float,
              memory_efficient: bool) -> nn.Module:
    from torchvision.models.densenet import DenseNet

    model = DenseNet(growth_rate, block_config, num_init_features, drop_rate=drop_rate, num_classes=num_classes,
                     memory_efficient=memory_efficient)
    if stem == "auto":
        stem = "cifar" if image_size < 64 else "imagenet"
    if stem == "cifar":
        model.features.conv0 = nn.Conv2d(in_channels, num_init_features, 3, 1, 1, bias=False)
        model.features.pool0 = nn.Identity()
    elif in_channels != 3:
        model.features.conv0 = nn.Conv2d(in_channels, num_init_features, 7, 2, 3, bias=False)
    if stem == "cifar" or in_channels != 3:
        nn.init.kaiming_normal_(model.features.conv0.weight)
    return replace_batchnorm(model, norm, norm_groups)


@MODELS.register("densenet121")
def densenet121(num_classes: int, in_channels: int, image_size: int, stem: Stem = "auto", norm: Norm = "batch",
                norm_groups: PositiveInt = 32, drop_rate: Dropout = 0.0, memory_efficient: bool = False,
                weights: Weights = "none") -> nn.Module:
    """DenseNet-121 on torchvision's DenseNet (7.98M parameters with the ImageNet stem and 1000 classes).

    Growth 32, blocks (6, 12, 24, 16), 64 initial features; stem 'cifar' for small images. memory_efficient:
    recompute concatenations in backward. weights 'imagenet': start from torchvision's ImageNet weights (read from
    $DEEPCOURSE_WEIGHTS or torch's hub cache; the tensors of the same shape)."""
    return with_weights(_densenet(num_classes, in_channels, image_size, 32, (6, 12, 24, 16), 64, stem, norm,
                                  norm_groups, drop_rate, memory_efficient), "densenet121", weights)


@MODELS.register("densenet_small")
def densenet_small(num_classes: int, in_channels: int, image_size: int, growth_rate: PositiveInt = 12,
                   block_config: list[PositiveInt] = [6, 6, 6],  # noqa: B006 - read-only default
                   num_init_features: PositiveInt = 24, stem: Stem = "cifar", norm: Norm = "batch",
                   norm_groups: PositiveInt = 32, drop_rate: Dropout = 0.0) -> nn.Module:
    """A small DenseNet-BC for 28-32 px images (0.18M parameters): CPU-trainable, same ideas as DenseNet-121.

    Three dense blocks of 6 bottleneck layers, growth 12, halving transitions."""
    return _densenet(num_classes, in_channels, image_size, growth_rate, tuple(block_config), num_init_features,
                     stem, norm, norm_groups, drop_rate, False)
