"""Every registered vision model: output shape at its input sizes, one SGD step lowers the loss on a fixed batch,
parameter counts equal to the references, and the `norm` option on the CNNs."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from deepcourse.api import MODELS, RecipeError, call_builder

# name -> (recipe options, in_channels, image_size): small settings so the whole file stays fast on a CPU. The
# ImageNet-stem nets get 64 px so their last stage is 2x2, not 1x1 (batch norm over 4 values is chaotic).
CASES: dict[str, tuple[dict[str, Any], int, int]] = {
    "simple_cnn": ({}, 3, 32),
    "lenet5": ({}, 1, 28),
    "lenet5_lab": ({}, 3, 32),
    "alexnet": ({"variant": "small"}, 1, 28),
    "vgg11": ({}, 3, 32),
    "vgg13": ({}, 3, 32),
    "vgg16": ({}, 3, 32),
    "vgg19": ({}, 3, 32),
    "googlenet": ({"width": 0.25}, 3, 32),
    "resnet18": ({"stem": "cifar"}, 3, 32),
    "resnet34": ({"stem": "imagenet"}, 3, 64),
    "resnet50": ({"stem": "imagenet"}, 3, 64),
    "resnet101": ({"stem": "imagenet"}, 3, 64),
    "resnet152": ({"stem": "imagenet"}, 3, 64),
    "resnet_mnist": ({}, 1, 28),
    "densenet121": ({"stem": "imagenet"}, 3, 64),
    "densenet_small": ({}, 3, 32),
    "mlp": ({"norm": "batch", "dropout": 0.2}, 1, 28),
    "airbench": ({"widths": [16, 32, 32]}, 3, 32),
}


def build(name: str, options: dict[str, Any] | None = None, *, num_classes: int = 10, in_channels: int = 3,
          image_size: int = 32) -> nn.Module:
    facts = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    return call_builder(MODELS.get(name), options or {}, loc="model", provided=facts)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_vision_model_has_a_case() -> None:
    vision = {e.name for e in MODELS.entries() if e.origin == "vision"}
    assert vision == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_shape_and_one_step_lowers_the_loss(name: str) -> None:
    options, channels, size = CASES[name]
    torch.manual_seed(0)
    model = build(name, options, num_classes=7, in_channels=channels, image_size=size)
    x = torch.randn(4, channels, size, size)
    y = torch.tensor([0, 3, 6, 2])
    model.train()

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same dropout masks before and after the step
        out = model(x)
        assert out.shape == (4, 7)
        return F.cross_entropy(out, y)

    before = loss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # a small step, whatever the depth
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item(), f"{name}: {before.item():.4f} -> {after.item():.4f}"
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 7)


@pytest.mark.parametrize("name,options,size", [
    ("lenet5", {}, 32), ("lenet5", {"kernel_size": 11, "padding": 5}, 28), ("alexnet", {"variant": "small"}, 32),
    ("resnet18", {"stem": "imagenet"}, 64), ("resnet_mnist", {}, 32), ("mlp", {}, 32), ("densenet_small", {}, 28),
    ("googlenet", {"width": 0.25}, 28), ("vgg11", {"head": "imagenet"}, 32), ("simple_cnn", {}, 28)])
def test_other_input_sizes(name: str, options: dict[str, Any], size: int) -> None:
    model = build(name, options, in_channels=3, image_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_alexnet_full_layout_at_227_px() -> None:
    with torch.device("meta"):  # shape and size without allocating 62M parameters
        model = build("alexnet", {"variant": "full"}, num_classes=1000, image_size=227)
        assert model(torch.zeros(2, 3, 227, 227)).shape == (2, 1000)
    assert count(model) == 62_378_344  # the single-tower AlexNet of the paper
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    small = build("alexnet", {}, image_size=28)  # auto -> small variant
    assert isinstance(small.features[0], nn.Conv2d) and small.features[0].kernel_size == (5, 5)


@pytest.mark.parametrize("name,options,facts,reference", [
    ("resnet18", {}, {"num_classes": 1000, "image_size": 224}, torchvision.models.resnet18),
    ("resnet34", {}, {"num_classes": 1000, "image_size": 224}, torchvision.models.resnet34),
    ("resnet50", {}, {"num_classes": 1000, "image_size": 224}, torchvision.models.resnet50),
    ("resnet101", {}, {"num_classes": 1000, "image_size": 224}, torchvision.models.resnet101),
    ("resnet152", {}, {"num_classes": 1000, "image_size": 224}, torchvision.models.resnet152),
    ("densenet121", {}, {"num_classes": 1000, "image_size": 224}, torchvision.models.densenet121),
    ("vgg11", {"norm": "none"}, {"num_classes": 1000, "image_size": 224}, torchvision.models.vgg11),
    ("vgg16", {"norm": "none"}, {"num_classes": 1000, "image_size": 224}, torchvision.models.vgg16),
])
def test_parameter_counts_match_torchvision(name: str, options: dict[str, Any], facts: dict[str, int],
                                            reference: Any) -> None:
    with torch.device("meta"):
        assert count(build(name, options, **facts)) == count(reference())


def test_reference_parameter_counts() -> None:
    assert count(build("resnet18", {"stem": "imagenet"}, num_classes=1000, image_size=224)) == 11_689_512  # 11.69M
    assert count(build("resnet18", {"stem": "cifar"}, num_classes=10, image_size=32)) == 11_173_962  # 11.17M
    assert count(build("lenet5", {}, in_channels=1, image_size=28)) == 61_706  # LeNet-5, 61.7k
    assert count(build("lenet5", {}, in_channels=1, image_size=32)) == 61_706
    # the lab's CIFAR LeNet: 260k parameters with batch norm (conv biases dropped before the norms)
    assert count(build("lenet5_lab", {})) == 260_124


def test_resnet_stems() -> None:
    cifar = build("resnet18", {"stem": "cifar"})
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    imagenet = build("resnet18", {"stem": "imagenet"}, in_channels=1, image_size=64)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.in_channels == 1
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert build("resnet18", {}, image_size=32).conv1.kernel_size == (3, 3)  # auto: cifar under 64 px
    assert float(build("resnet18", {}).layer1[0].bn2.weight.detach().abs().sum()) == 0  # zero-init by default
    assert float(build("resnet18", {"zero_init_residual": False}).layer1[0].bn2.weight.detach().abs().sum()) > 0


NORMS = ["batch", "layer", "group", "instance", "switchable", "lrn", "none"]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ["lenet5", "resnet18", "vgg11", "densenet_small", "simple_cnn"])
def test_norm_option(name: str, norm: str) -> None:
    model = build(name, {"norm": norm, "norm_groups": 4}, image_size=32)
    kinds = {"batch": nn.BatchNorm2d, "layer": nn.GroupNorm, "group": nn.GroupNorm, "instance": nn.InstanceNorm2d,
             "lrn": nn.LocalResponseNorm}
    if norm == "switchable":
        from deepcourse_vision.layers import SwitchableNorm2d
        kinds["switchable"] = SwitchableNorm2d
    if norm in kinds:
        assert any(isinstance(m, kinds[norm]) for m in model.modules())
    if norm != "batch":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_too_small_input_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="resize"):
        build("lenet5", {}, in_channels=1, image_size=8)


def test_bad_option_names_the_key() -> None:
    with pytest.raises(RecipeError) as err:
        build("lenet5", {"norm": "weird", "channls": [1, 2]})
    text = err.value.render()
    assert "model.norm" in text and "model.channls" in text and "channels" in text
