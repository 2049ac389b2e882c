"""ResNet-18/34/50/101/152 (He et al. 2016) on torchvision's implementation, and the small MNIST ResNet.

torchvision's `ResNet` takes the block type, the stage depths and a `norm_layer`, so it is reused as is and only
the stem is swapped. `stem = "imagenet"` keeps the 7x7 stride-2 convolution and max-pool that shrink a 224 px
image 4x before the first block; on a 32 px CIFAR image that leaves 8x8 maps and costs accuracy, so
`stem = "cifar"` uses one 3x3 stride-1 convolution and no pool (the lab notes' choice; 11.17M parameters for
ResNet-18 with 10 classes). `auto` picks cifar under 64 px.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from deepcourse.api import MODELS

from ..layers import Dropout, Norm, PositiveInt, make_norm, norm_factory
from ..pretrained import Weights, with_weights

Stem = Literal["auto", "imagenet", "cifar"]


def _zero_init_last_norm(model: nn.Module) -> None:
    """Start each residual branch at zero (Goyal et al. 2017): its last norm's scale is 0, so blocks begin as
    identities. Without it, activations grow through ResNet-152's 50 blocks and the first steps are chaotic.
    Done here because torchvision's own flag assumes batch norm."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for m in model.modules():
        last = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
        scale = None if last is None else getattr(last, "weight", None)
        if scale is None and last is not None:  # a lab norm piece calls its scale gamma
            scale = getattr(last, "gamma", None)
        if scale is not None:
            nn.init.zeros_(scale)


def _resnet(block: str, layers: list[int], num_classes: int, in_channels: int, image_size: int, stem: Stem,
            norm: Norm, norm_groups: int, zero_init_residual: bool, dropout: float) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    model = ResNet(BasicBlock if block == "basic" else Bottleneck, layers, num_classes=num_classes,
                   norm_layer=norm_factory(norm, norm_groups))
    if stem == "auto":
        stem = "cifar" if image_size < 64 else "imagenet"
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    if stem == "cifar" or in_channels != 3:
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if zero_init_residual:
        _zero_init_last_norm(model)
    if dropout:
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


def _builder(name: str, block: str, layers: list[int], params: str) -> None:
    def build(num_classes: int, in_channels: int, image_size: int, stem: Stem = "auto", norm: Norm = "batch",
              norm_groups: PositiveInt = 32, zero_init_residual: bool = True, dropout: Dropout = 0.0,
              weights: Weights = "none") -> nn.Module:
        return with_weights(_resnet(block, layers, num_classes, in_channels, image_size, stem, norm, norm_groups,
                                    zero_init_residual, dropout), name, weights)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{name.replace('resnet', 'ResNet-')} on torchvision's ResNet ({params} parameters with the "
                     f"ImageNet stem and 1000 classes).\n\n{block.capitalize()} blocks {layers}; stem 'cifar' "
                     f"(3x3, no max-pool) for small images, 'auto' picks it under 64 px. zero_init_residual "
                     f"(default, as in timm): each block starts as the identity, which keeps deep nets trainable from "
                     f"step one. weights 'imagenet': start from torchvision's ImageNet weights (read from "
                     f"$DEEPCOURSE_WEIGHTS or torch's hub cache; the tensors of the same shape).")
    MODELS.register(name, build)


for _name, _block, _layers, _params in (("resnet18", "basic", [2, 2, 2, 2], "11.69M"),
                                        ("resnet34", "basic", [3, 4, 6, 3], "21.80M"),
                                        ("resnet50", "bottleneck", [3, 4, 6, 3], "25.56M"),
                                        ("resnet101", "bottleneck", [3, 4, 23, 3], "44.55M"),
                                        ("resnet152", "bottleneck", [3, 8, 36, 3], "60.19M")):
    _builder(_name, _block, _layers, _params)


@MODELS.register("resnet_mnist")
def resnet_mnist(num_classes: int, in_channels: int, channels: PositiveInt = 32, norm: Norm = "batch",
                 norm_groups: PositiveInt = 32, dropout: Dropout = 0.0) -> nn.Module:
    """The small two-residual-block net that reaches 99% on MNIST.

    3x3 conv stem and 2x2 max-pool (28 -> 14 px), a residual block, a stride-2 residual block that doubles the
    channels (-> 7 px), global average pool, linear: about 78k parameters and 6M multiply-adds per image, so three
    epochs take minutes on a CPU."""
    from torchvision.models.resnet import BasicBlock

    norm_layer = norm_factory(norm, norm_groups)
    wide = 2 * channels
    downsample = nn.Sequential(nn.Conv2d(channels, wide, 1, 2, bias=False), make_norm(norm, wide, groups=norm_groups))
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False), make_norm(norm, channels, groups=norm_groups),
        nn.ReLU(inplace=True), nn.MaxPool2d(2),
        BasicBlock(channels, channels, norm_layer=norm_layer),
        BasicBlock(channels, wide, stride=2, downsample=downsample, norm_layer=norm_layer),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(wide, num_classes))
