"""The fast CIFAR method's pieces: the airbench net's whitening layer set from data, alternating flips, translate and
multi-crop test-time augmentation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from vision_fixtures import RECIPES, make_imagefolder

from deepcourse.api import MODELS, TRANSFORMS, RecipeError, build_task, call_builder, load_recipe
from deepcourse_vision.augment import MULTI_CROP_WEIGHTS, half_of
from deepcourse_vision.models.airbench import Whitening


def correlated_images(n: int = 64, size: int = 12, seed: int = 0) -> torch.Tensor:
    """Images whose neighbouring pixels and channels are strongly correlated (a shared smooth field plus a little
    noise), as natural images are."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.randn(n, 1, size // 3, size // 3, generator=g), size=(size, size), mode="bilinear")
    return field.expand(n, 3, size, size) + 0.3 * torch.randn(n, 3, size, size, generator=g)


def patch_covariance(out: torch.Tensor) -> torch.Tensor:
    flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
    return flat.T @ flat / len(flat)


def test_whitening_decorrelates_the_first_layers_outputs() -> None:
    x = correlated_images()
    layer = Whitening(3, 2, eps=1e-6, init_samples=64)
    before = patch_covariance(F.conv2d(x, layer.weight[:12]))
    layer.init_from_data(x)
    half = F.conv2d(x, layer.weight[:12])  # the second half is the first's negative
    assert torch.allclose(patch_covariance(half), torch.eye(12), atol=1e-3)
    assert not torch.allclose(before, torch.eye(12), atol=0.1)
    assert torch.equal(layer.weight[12:], -layer.weight[:12]) and not layer.weight.requires_grad


def test_the_engine_initialises_the_whitening_from_the_training_data(tmp_path: Path) -> None:
    """A run of airbench: its whitening layer (frozen, so as the engine set it) decorrelates the training images'
    patches; the sample is all 24 training images here."""
    from safetensors.torch import load_file

    import deepcourse

    root = make_imagefolder(tmp_path / "chars", per_class=8, size=12, splits=("train", "develop"))
    recipe = {"name": "tiny", "task": {"name": "image-classification"}, "optimizer": {"name": "sgd"},
              "data": {"name": "imagefolder", "data_dir": str(root), "batch_size": 8},
              "model": {"name": "airbench", "widths": [8, 8, 8], "whiten_eps": 1e-6},
              "train": {"max_steps": 1, "progress": False}}
    result = deepcourse.run(recipe, runs_root=tmp_path / "runs", report=False)
    weight = load_file(str(result.run_dir / "best" / "model.safetensors"))["features.whiten.weight"]
    task = build_task(load_recipe(data=recipe))
    train = task.setup_data(load_recipe(data=recipe).data, splits=("train",), seed=0).splits["train"]
    x = task.pipeline(train.arrays["image"], train=False)
    assert len(x) == 24
    assert torch.allclose(patch_covariance(F.conv2d(x, weight[:12])), torch.eye(12), atol=0.05)


def test_airbench_is_width_and_depth_configurable() -> None:
    facts = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    small = call_builder(MODELS.get("airbench"), {"widths": [8, 16, 16], "depth": 3}, loc="model", provided=facts)
    assert [n for n, _ in small.features.block1.named_children()] == [
        "conv1", "pool", "norm1", "act1", "conv2", "norm2", "act2", "conv3", "norm3", "act3"]
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(RecipeError, match="at least 9 px"):
        call_builder(MODELS.get("airbench"), {}, loc="model", provided={**facts, "image_size": 8})


def asymmetric_images(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def flipped(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((mirrored | (out == x).flatten(1).all(1)).all())  # every image is itself or its mirror
    return mirrored


def test_alternating_flip_flips_each_image_once_in_two_consecutive_epochs() -> None:
    flip = call_builder(TRANSFORMS.get("alternating_flip"), {}, loc="t", provided={})
    x, index = asymmetric_images(400), torch.arange(400)
    by_epoch = [flipped(flip(x, train=True, epoch=e, index=index), x) for e in range(4)]
    for a, b in zip(by_epoch, by_epoch[1:]):
        assert bool((a ^ b).all())  # exactly once in any two consecutive epochs
    assert 0.4 < float(by_epoch[0].float().mean()) < 0.6  # a random half
    # the identity is the sample's, not its place in the batch: a shuffled batch flips the same images
    order = torch.randperm(400, generator=torch.Generator().manual_seed(1))
    assert torch.equal(flipped(flip(x[order], train=True, epoch=0, index=order), x[order]), by_epoch[0][order])
    assert torch.equal(flip(x, train=False), x)
    assert not torch.equal(half_of(index, 0), half_of(index, 1))  # the seed option picks another half


def test_the_task_gives_alternating_flip_the_epoch_and_the_images_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(RECIPES / "quickstart.toml", [
        'task.transforms=[{name = "alternating_flip"}]', "task.normalize=false"])
    task = build_task(recipe)
    bundle = task.setup_data(recipe.data, splits=("train",), seed=0)
    batch = bundle.splits["train"].__getitems__(list(range(7, 39)))
    batch["image"] = asymmetric_images(32)  # (a digit can be its own mirror)
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(task, "_forward", lambda model, x: seen.append(x) or torch.zeros(len(x), 10))
    for epoch in (0, 1):
        task.set_epoch(epoch)
        task.training_step(nn.Identity(), batch)
    plain = task.pipeline(batch["image"], train=False)
    assert torch.equal(batch["index"], torch.arange(7, 39))
    assert bool((flipped(seen[0], plain) ^ flipped(seen[1], plain)).all())


def test_translate_keeps_the_shape_and_shifts_the_content() -> None:
    translate = call_builder(TRANSFORMS.get("translate"), {"pixels": 2}, loc="t", provided={})
    x = torch.rand(64, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out = translate(x, train=True)
    assert out.shape == x.shape and torch.equal(translate(x, train=False), x)
    padded = F.pad(x, (2,) * 4, mode="reflect")
    shifts = []
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy:dy + 10,
                                                                                               dx:dx + 10])]
        assert len(found) == 1  # a window of the reflect-padded image, shifted by at most 2 pixels each way
        shifts.append(found[0])
    assert len(set(shifts)) > 10  # each image its own shift


class Linear(nn.Module):
    """A model linear in its input: the weighted average of its logits over the views is checkable by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_multi_crop_tta_averages_airbenchs_six_views() -> None:
    recipe = load_recipe(RECIPES / "quickstart.toml", ["eval.tta=multi_crop", "task.normalize=false"])
    task = build_task(recipe)
    task.setup_data(recipe.data, splits=("train",), seed=0)
    images = asymmetric_images(5)
    torch.manual_seed(0)
    model = Linear()
    x = images.float() / 255
    padded = F.pad(x, (1,) * 4, mode="reflect")
    views = [x, padded[..., :8, :8], padded[..., 2:, 2:]]
    expected = sum(w * model(v) for w, v in zip(MULTI_CROP_WEIGHTS, [u for v in views for u in (v, v.flip(-1))]))
    with torch.no_grad():
        assert torch.allclose(task.log_probs(model, images), expected.log_softmax(-1), atol=1e-5)


def test_a_tta_mode_the_task_lacks_exits_2_naming_eval_tta() -> None:
    from click.testing import CliRunner

    from deepcourse.testing import cli

    out = CliRunner().invoke(cli, ["check", str(RECIPES / "quickstart.toml"), "--set", "eval.tta=nine_crop"])
    assert out.exit_code == 2 and "eval.tta" in out.output and "multi_crop" in out.output, out.output
    assert "Traceback" not in out.output
