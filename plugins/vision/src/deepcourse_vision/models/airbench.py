"""airbench: the net of the fastest known CIFAR-10 training (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a
single GPU", 2024), width- and depth-configurable.

A 2x2 patch-whitening convolution whose filters come from the training data (`Whitening.init_from_data`, through the
engine's data-dependent initialization), then three blocks of 3x3 convolutions (max pooling after the first, batch
norm without a learned scale, GELU), a global max pool and a linear layer scaled down by `scaling_factor`. The
defaults are airbench94's; airbench95 widens the blocks to (128, 384, 384), airbench96 to (128, 512, 512) with
three convolutions per block.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from deepcourse.api import MODELS, RecipeError

from ..layers import ConvClassifier, PositiveInt


class Whitening(nn.Conv2d):
    """A convolution whose filters whiten the input's patches: the eigenvectors of the patch covariance scaled by
    1/sqrt(eigenvalue + eps), and their negatives (so the GELU after it passes both signs). Set from data, then
    frozen: only its bias trains (for the first epochs, in the fast recipes, by `train.freeze`)."""

    def __init__(self, in_channels: int, kernel_size: int, eps: float, init_samples: int) -> None:
        super().__init__(in_channels, 2 * in_channels * kernel_size ** 2, kernel_size, padding=0, bias=True)
        self.eps, self.init_samples = eps, init_samples
        self.weight.requires_grad = False
        nn.init.zeros_(self.bias)  # type: ignore[arg-type]  # bias=True

    def init_from_data(self, x: torch.Tensor) -> None:
        """`x`: the sample's images; with test-time augmentation the task stacks views after the plain images,
        which come first: only they are taken."""
        c, (h, w) = x.shape[1], self.kernel_size
        patches = x[:self.init_samples].float().unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = eigenvectors.T.reshape(-1, c, h, w).flip(0)  # the largest eigenvalue's first
        scaled = filters / torch.sqrt(eigenvalues.flip(0).clamp_min(0).view(-1, 1, 1, 1) + self.eps)
        self.weight.data.copy_(torch.cat((scaled, -scaled)).to(self.weight.dtype))
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """3x3 'same' convolution without bias, initialised near the identity (dirac on its first in_channels
    filters): it trains fast."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[:min(self.in_channels, self.out_channels)])


class BatchNorm(nn.BatchNorm2d):
    """Batch norm without a learned scale (the next convolution has one); `momentum` in airbench's convention:
    the weight of the old running statistics."""

    def __init__(self, width: int, momentum: float) -> None:
        super().__init__(width, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad = False


class Block(nn.Sequential):
    """conv -> max pool -> norm -> GELU, then (depth - 1) x (conv -> norm -> GELU)."""

    def __init__(self, cin: int, cout: int, depth: int, momentum: float) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv1=Conv(cin, cout), pool=nn.MaxPool2d(2),
                                                          norm1=BatchNorm(cout, momentum), act1=nn.GELU())
        for i in range(2, depth + 1):
            layers.update({f"conv{i}": Conv(cout, cout), f"norm{i}": BatchNorm(cout, momentum), f"act{i}": nn.GELU()})
        super().__init__(layers)


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@MODELS.register("airbench")
def airbench(num_classes: int, in_channels: int, image_size: int,
             widths: Annotated[list[PositiveInt], Field(min_length=3, max_length=3)] = [64, 256, 256],  # noqa: B006
             depth: Annotated[int, Field(ge=1, le=4)] = 2, scaling_factor: Annotated[float, Field(gt=0)] = 1 / 9,
             bn_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.6, whiten_kernel: Annotated[int, Field(ge=1, le=4)]
             = 2, whiten_eps: Annotated[float, Field(gt=0)] = 5e-4,
             init_samples: Annotated[int, Field(gt=0)] = 5000) -> nn.Module:
    """airbench94's net (Jordan 2024): a patch-whitening conv set from the data, three conv blocks, a scaled head.

    widths: channels of the three blocks; depth: 3x3 convolutions per block (airbench96: 3); scaling_factor: the
    logits' scale; bn_momentum: the weight of the old batch-norm statistics (airbench's convention); whiten_kernel:
    the whitening patch size (its width is 2 x in_channels x kernel^2); init_samples: training images the whitening
    is computed from."""
    side = image_size - whiten_kernel + 1
    if side < 8:
        raise RecipeError(f"model: airbench needs images of at least {7 + whiten_kernel} px (three 2x poolings "
                          f"after the {whiten_kernel}x{whiten_kernel} whitening); got {image_size} px")
    whiten = Whitening(in_channels, whiten_kernel, whiten_eps, init_samples)
    layers: OrderedDict[str, nn.Module] = OrderedDict(whiten=whiten, act=nn.GELU())
    width = whiten.out_channels
    for i, out in enumerate(widths, 1):
        layers[f"block{i}"] = Block(width, out, depth, bn_momentum)
        width = out
    layers["pool"] = nn.AdaptiveMaxPool2d(1)
    features = nn.Sequential(layers)
    return ConvClassifier(features, nn.Sequential(nn.Linear(width, num_classes, bias=False), Scale(scaling_factor)))
