"""The norm option and Switchable Normalization."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deepcourse_vision.layers import SwitchableNorm2d, make_norm

BIG = 1e4  # softmax([0, -BIG, -BIG]) is exactly [1, 0, 0] in float32


def select(sn: SwitchableNorm2d, which: int) -> SwitchableNorm2d:
    weights = torch.full((3,), -BIG)
    weights[which] = 0.0
    with torch.no_grad():
        sn.mean_weight.copy_(weights)
        sn.var_weight.copy_(weights)
    return sn


def with_affine(sn: SwitchableNorm2d, ref: nn.Module) -> None:
    torch.manual_seed(5)
    with torch.no_grad():
        sn.weight.copy_(torch.rand(sn.num_features) + 0.5)
        sn.bias.copy_(torch.randn(sn.num_features))
        ref.weight.copy_(sn.weight)
        ref.bias.copy_(sn.bias)


@pytest.mark.parametrize("which,reference", [
    (0, lambda c: nn.InstanceNorm2d(c, affine=True)),
    (1, lambda c: nn.GroupNorm(1, c)),  # layer norm over (C, H, W) with a per-channel affine
    (2, lambda c: nn.BatchNorm2d(c)),
])
def test_switchable_norm_equals_the_norm_it_selects(which: int, reference) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 5, 7, 9) * 3 + 1
    sn, ref = select(SwitchableNorm2d(5), which), reference(5)
    with_affine(sn, ref)
    sn.train(), ref.train()
    torch.testing.assert_close(sn(x), ref(x), rtol=1e-4, atol=1e-4)


def test_switchable_norm_tracks_batch_statistics_like_batchnorm() -> None:
    torch.manual_seed(1)
    sn, bn = select(SwitchableNorm2d(4), 2), nn.BatchNorm2d(4)
    with_affine(sn, bn)
    for _ in range(5):
        x = torch.randn(8, 4, 6, 6) * 2 + 3
        sn(x), bn(x)
    torch.testing.assert_close(sn.running_mean, bn.running_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sn.running_var, bn.running_var, rtol=1e-4, atol=1e-5)
    sn.eval(), bn.eval()
    x = torch.randn(3, 4, 6, 6)
    torch.testing.assert_close(sn(x), bn(x), rtol=1e-4, atol=1e-4)


def test_switchable_norm_mixes_and_learns_its_weights() -> None:
    torch.manual_seed(2)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    sn = SwitchableNorm2d(3)  # equal weights: a third of each normaliser's statistics
    out = sn(x)
    flat = x.reshape(4, 3, -1)
    mean = (flat.mean(-1, keepdim=True) + flat.mean((1, 2), keepdim=True).expand(4, 3, 1)
            + flat.mean((0, 2), keepdim=True).expand(4, 3, 1)) / 3
    var = (flat.var(-1, unbiased=False, keepdim=True) + flat.var((1, 2), unbiased=False, keepdim=True)
           + flat.var((0, 2), unbiased=False, keepdim=True)) / 3
    torch.testing.assert_close(out, ((flat - mean) / torch.sqrt(var + 1e-5)).reshape(x.shape), rtol=1e-4, atol=1e-4)
    (out * torch.randn_like(out)).sum().backward()
    assert sn.mean_weight.grad is not None and sn.mean_weight.grad.abs().sum() > 0
    assert sn.var_weight.grad is not None and sn.var_weight.grad.abs().sum() > 0


def test_switchable_norm_under_bfloat16_autocast() -> None:
    sn = SwitchableNorm2d(3)
    x = torch.randn(2, 3, 4, 4).bfloat16()
    assert sn(x).dtype == torch.bfloat16


@pytest.mark.parametrize("kind,cls", [("batch", nn.BatchNorm2d), ("layer", nn.GroupNorm), ("group", nn.GroupNorm),
                                      ("instance", nn.InstanceNorm2d), ("switchable", SwitchableNorm2d),
                                      ("lrn", nn.LocalResponseNorm), ("none", nn.Identity)])
def test_make_norm(kind: str, cls: type) -> None:
    layer = make_norm(kind, 12, groups=8)
    assert isinstance(layer, cls)
    x = torch.randn(2, 12, 5, 5)
    assert layer(x).shape == x.shape


def test_group_norm_picks_a_divisor_of_the_channels() -> None:
    assert make_norm("group", 6, groups=32).num_groups == 6  # LeNet's 6 channels with the usual 32 groups
    assert make_norm("group", 20, groups=8).num_groups == 5
    assert make_norm("group", 64, groups=32).num_groups == 32
    assert make_norm("layer", 64).num_groups == 1
