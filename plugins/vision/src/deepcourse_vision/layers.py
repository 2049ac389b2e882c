"""Building blocks every CNN family shares: the `norm` and `activation` options, Switchable Normalization,
and the dummy forward that sizes a classifier for the recipe's image size.

Every model builder takes `norm` (one of `Norm`) and turns it into layers with `make_norm`, so a recipe can swap
batch norm for group norm or Switchable Normalization in any CNN without touching the model code. `norm` and
`activation` also take a student's hand-written layer, `"lab:NAME"` (a batchnorm or groupnorm piece; a relu piece),
checked when the recipe is read: the lab's piece trains where the built-in one would.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from deepcourse.api import RecipeError, lab_choice, lab_layer

NormName = Literal["batch", "layer", "group", "instance", "switchable", "lrn", "none"]
ActivationName = Literal["relu", "sigmoid", "tanh", "gelu", "silu", "leaky_relu", "elu"]
#: how a recipe names a student's piece where a built-in layer would go
LAB = "lab:"
if TYPE_CHECKING:  # a built-in name or "lab:NAME"; the checks below run when a recipe is validated
    Norm = str
    Activation = str
else:
    # feature maps take a piece normalising per channel: a batchnorm piece (every pixel an example) or a groupnorm
    # piece; a layernorm piece normalises N x D features and belongs to the MLP's `norm`
    Norm = lab_choice(NormName, "layer", "batchnorm", "groupnorm")
    Activation = lab_choice(ActivationName, "layer", "relu")
Pool = Literal["max", "avg"]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Dropout = Annotated[float, Field(ge=0, lt=1)]

__all__ = ["Norm", "NormName", "Activation", "ActivationName", "LAB", "Pool", "SwitchableNorm2d", "make_norm",
           "norm_factory", "make_activation", "make_pool", "conv_norm_act", "feature_shape", "replace_batchnorm",
           "ConvClassifier", "mlp_head"]


class SwitchableNorm2d(nn.Module):
    """Switchable Normalization (Luo et al., ICLR 2019): a learned softmax mix of instance-, layer- and batch-norm
    statistics, so each layer picks the normaliser that suits it. PyTorch has no such layer.

    Means and variances are mixed with separate weights (`mean_weight`, `var_weight`, order IN, LN, BN). The
    statistics use the biased variance, like `nn.BatchNorm2d`/`InstanceNorm2d`/`GroupNorm(1, C)` normalise with,
    so when a weight vector selects one normaliser the layer computes exactly that normaliser. Batch statistics
    are tracked as running averages (unbiased variance, as BatchNorm does) and used in eval mode.
    """

    running_mean: torch.Tensor  # buffers (nn.Module types its attributes as tensor-or-module)
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        xf = x.float().reshape(n, c, -1)
        mean_in = xf.mean(-1, keepdim=True)  # [N, C, 1]
        var_in = xf.var(-1, keepdim=True, unbiased=False)
        square_in = var_in + mean_in ** 2  # E[x^2] per sample and channel: LN and BN stats derive from it
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = (square_in.mean(1, keepdim=True) - mean_ln ** 2).clamp_min(0)
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = (square_in.mean(0, keepdim=True) - mean_bn ** 2).clamp_min(0)
            count = n * xf.shape[-1]
            with torch.no_grad():
                unbiased = var_bn.flatten() * (count / max(count - 1, 1))
                self.running_mean.lerp_(mean_bn.flatten().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        else:
            mean_bn = self.running_mean.float().view(1, c, 1)
            var_bn = self.running_var.float().view(1, c, 1)
        mw = torch.softmax(self.mean_weight.float(), 0)
        vw = torch.softmax(self.var_weight.float(), 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
        out = (xf - mean) * torch.rsqrt(var + self.eps)
        out = out * self.weight.float().view(1, c, 1) + self.bias.float().view(1, c, 1)
        return out.reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def _group_count(channels: int, groups: int) -> int:
    """The largest divisor of `channels` not above `groups`: GroupNorm needs groups | channels, and LeNet's 6
    channels should still work with the usual `norm_groups = 32`."""
    for g in range(min(groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(kind: Norm, channels: int, *, groups: int = 32) -> nn.Module:
    """A normalisation layer for [N, C, H, W] feature maps with `channels` channels."""
    if kind.startswith(LAB):  # a batchnorm piece runs on every pixel as an example of C features
        return lab_layer(kind, key="model.norm", features=channels, groups=groups)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # normalise over (C, H, W) per sample, with a per-channel affine: GroupNorm with 1 group
        return nn.GroupNorm(1, channels)
    if kind == "group":
        return nn.GroupNorm(_group_count(channels, groups), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "switchable":
        return SwitchableNorm2d(channels)
    if kind == "lrn":  # AlexNet's constants (section 3.3 of the paper)
        return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def norm_factory(kind: Norm, groups: int = 32) -> Callable[[int], nn.Module]:
    """`make_norm` as the one-argument `norm_layer(channels)` that torchvision's ResNet expects."""
    def build(channels: int) -> nn.Module:
        return make_norm(kind, channels, groups=groups)
    return build


def make_activation(kind: Activation) -> nn.Module:
    if kind.startswith(LAB):
        return lab_layer(kind, key="model.activation")
    makers: dict[str, Callable[[], nn.Module]] = {
        "relu": lambda: nn.ReLU(inplace=True), "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
        "silu": lambda: nn.SiLU(inplace=True), "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
        "elu": lambda: nn.ELU(inplace=True)}
    return makers[kind]()


def make_pool(kind: Pool, kernel_size: int, stride: int | None = None, padding: int = 0) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride, padding)
    return nn.AvgPool2d(kernel_size, stride, padding)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                  padding: int | None = None, norm: Norm = "batch", activation: Activation = "relu",
                  groups: int = 32) -> nn.Sequential:
    """Conv -> norm -> activation. The conv has no bias when a norm with its own shift follows."""
    padding = (kernel_size - 1) // 2 if padding is None else padding
    bias = norm in ("none", "lrn")
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias),
                         make_norm(norm, out_channels, groups=groups), make_activation(activation))


def feature_shape(features: nn.Module, in_channels: int, image_size: int, model: str) -> torch.Size:
    """Output shape of `features` for one image: classifiers are sized from it, so every model works at the
    recipe's image size. Runs on the module's device (meta tensors included) in eval mode, without gradients."""
    param = next(features.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, in_channels, image_size, image_size, device=device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise RecipeError(f"model: '{model}' cannot take {image_size}x{image_size} images ({first}); resize "
                          f"them with a resize transform in task.transforms, or pick a model made for small "
                          f"inputs") from None
    finally:
        features.train(was_training)
    if out.numel() == 0 or min(out.shape[2:], default=1) < 1:
        raise RecipeError(f"model: '{model}' shrinks {image_size}x{image_size} images to nothing; resize them "
                          f"with a resize transform in task.transforms")
    return out.shape[1:]


def replace_batchnorm(module: nn.Module, kind: Norm, groups: int = 32) -> nn.Module:
    """Swap every BatchNorm2d of a torchvision model (which hard-codes it) for the recipe's `norm`."""
    if kind == "batch":
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, make_norm(kind, child.num_features, groups=groups))
        else:
            replace_batchnorm(child, kind, groups)
    return module


def mlp_head(in_features: int, hidden: Sequence[int], num_classes: int, *, activation: Activation = "relu",
             dropout: float = 0.0, dropout_first: bool = False) -> nn.Sequential:
    """Fully connected layers [Linear -> activation -> Dropout] per `hidden` width, then the class scores.
    `dropout_first` also drops the input features, as AlexNet and VGG do before each big linear layer."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        if dropout and dropout_first:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, h), make_activation(activation)]
        if dropout and not dropout_first:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class ConvClassifier(nn.Module):
    """`features` (convolutions) then `classifier` on the flattened feature maps: the shape of LeNet, AlexNet,
    VGG and the seed lab's CNN."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
