"""Batched augmentations: shapes, evaluation behaviour, what each one does, determinism under torch.manual_seed."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn import functional as F

from deepcourse.api import TRANSFORMS, RecipeError, call_builder
from deepcourse_vision.transforms import ImagePipeline, RandomCrop, build_transforms

# name -> (options, whether it draws random numbers in training)
CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "random_crop": ({"padding": 4, "padding_mode": "reflect"}, True),
    "center_crop": ({"size": 10}, False),
    "resize": ({"size": 20}, False),
    "hflip": ({}, True),
    "vflip": ({}, True),
    "rotation": ({"degrees": 30}, True),
    "gaussian_noise": ({"std": 0.1}, True),
    "cutout": ({"size": 5}, True),
    "alternating_flip": ({}, False),  # derandomised: the epoch and each image's index decide
    "translate": ({"pixels": 2}, True),
}
OUT_SIZE = {"center_crop": 10, "resize": 20}


def make(name: str, **options: Any):
    return call_builder(TRANSFORMS.get(name), options, loc="t", provided={})


def batch(n: int = 16, c: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(0))


def test_every_transform_has_a_case() -> None:
    assert {e.name for e in TRANSFORMS.entries() if e.origin == "vision"} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_dtype_and_determinism(name: str) -> None:
    options, random = CASES[name]
    t = make(name, **options)
    x = batch()
    sample = {"epoch": 1, "index": torch.arange(len(x))} if t.per_sample else {}
    torch.manual_seed(3)
    a = t(x, train=True, **sample)
    torch.manual_seed(3)
    b = t(x, train=True, **sample)
    size = OUT_SIZE.get(name, 16)
    assert a.shape == (16, 3, size, size) and a.dtype == torch.float32
    assert torch.equal(a, b)  # same seed, same augmentation
    torch.manual_seed(4)
    c = t(x, train=True, **sample)
    assert torch.equal(a, c) is not random  # another seed, another augmentation (only for random ones)
    assert 0 <= float(a.min()) and float(a.max()) <= 1


@pytest.mark.parametrize("name", ["hflip", "vflip", "rotation", "gaussian_noise", "cutout", "alternating_flip",
                                  "translate"])
def test_augmentations_do_nothing_at_evaluation(name: str) -> None:
    x = batch()
    assert torch.equal(make(name, **CASES[name][0])(x, train=False), x)


def test_random_crop_shifts_each_image_within_the_padding() -> None:
    x = batch(8)
    torch.manual_seed(0)
    out = make("random_crop", padding=2)(x, train=True)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(8):  # every output is the padded image cropped at one of the 5x5 offsets
        assert any(torch.equal(out[i], padded[i, :, top:top + 16, left:left + 16])
                   for top in range(5) for left in range(5))
    offsets = {(int((out[i] != 0).float().argmax())) for i in range(8)}
    assert len(offsets) > 1  # not all shifted the same way
    assert torch.equal(make("random_crop")(x, train=True), x)  # no padding, same size: nothing to choose


def test_random_crop_to_a_size_and_its_centre_crop_at_evaluation() -> None:
    x = batch(4, size=20)
    crop = make("random_crop", size=16)
    assert crop(x, train=True).shape == (4, 3, 16, 16)
    assert torch.equal(crop(x, train=False), x[..., 2:18, 2:18])


def test_flips() -> None:
    x = batch()
    assert torch.equal(make("hflip", p=1.0)(x, train=True), x.flip(-1))
    assert torch.equal(make("vflip", p=1.0)(x, train=True), x.flip(-2))
    assert torch.equal(make("hflip", p=0.0)(x, train=True), x)
    torch.manual_seed(0)
    half = make("hflip")(x, train=True)
    flipped = [torch.equal(half[i], x[i].flip(-1)) for i in range(16)]
    assert 0 < sum(flipped) < 16


def test_rotation_keeps_the_centre_and_fills_the_corners() -> None:
    x = torch.full((8, 1, 15, 15), 0.7)
    torch.manual_seed(0)
    out = make("rotation", degrees=45, fill=0.1)(x, train=True)
    assert torch.allclose(out[:, :, 7, 7], torch.tensor(0.7))
    corners = out[:, 0, 0, 0]  # uncovered: fill; partly covered: a blend of fill and image
    assert ((corners >= 0.1 - 1e-6) & (corners <= 0.7 + 1e-6)).all()
    assert torch.isclose(corners, torch.tensor(0.1)).sum() >= 4
    assert torch.allclose(make("rotation", p=0.0)(x, train=True), x)


def test_gaussian_noise_statistics() -> None:
    x = torch.full((64, 3, 16, 16), 0.5)
    torch.manual_seed(0)
    noise = make("gaussian_noise", std=0.05)(x, train=True) - x
    assert abs(float(noise.mean())) < 0.005 and abs(float(noise.std()) - 0.05) < 0.005


def test_cutout_fills_one_square_per_image() -> None:
    x = torch.zeros(32, 3, 16, 16)
    torch.manual_seed(0)
    out = make("cutout", size=5, fill=1.0)(x, train=True)
    per_image = (out[:, 0] == 1).flatten(1).sum(1)
    assert ((per_image >= 3) & (per_image <= 25)).all()
    assert (per_image == 25).any()
    assert torch.equal(out[:, 0], out[:, 2])  # the same hole in every channel


def test_resize_both_modes() -> None:
    x = batch(2, size=28)
    r = make("resize", size=32)
    assert torch.equal(r(x, train=True), r(x, train=False))
    assert r(x, train=True).shape == (2, 3, 32, 32)


def test_pipeline_normalises_and_runs_in_order() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    pipe = ImagePipeline(build_transforms([{"name": "hflip", "p": 1.0}]), mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.1])
    out = pipe(images, train=True)
    expected = (images.float() / 255).flip(-1)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.2, 0.1]).view(1, 3, 1, 1)
    expected = (expected - mean) / std
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(pipe(images, train=False), (expected.flip(-1)))


def test_tta_views() -> None:
    images = torch.randint(0, 256, (3, 1, 12, 12), dtype=torch.uint8)
    pipe = ImagePipeline([RandomCrop(padding=2)], mean=[0.5], std=[0.25])
    plain = pipe(images, train=False)
    assert len(pipe.views(images, "none")) == 1
    flip = pipe.views(images, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], plain.flip(-1))
    ten = pipe.views(images, "ten_crop")
    assert len(ten) == 10 and all(v.shape == plain.shape for v in ten)
    assert torch.equal(ten[4], plain)  # the centre crop of the padded image is the image
    assert torch.equal(ten[9], plain.flip(-1))
    with pytest.raises(RecipeError, match="random_crop"):
        ImagePipeline([]).views(images, "ten_crop")


def test_transform_specs_are_checked_with_the_recipe(tmp_path) -> None:
    from deepcourse.api import load_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[task]\nname = "image-classification"\ntransforms = [{name = "random_crop", '
                      'padding = -1}, {name = "hfilp"}, {p = 1}]\n[data]\nname = "digits"\n[model]\nname = "mlp"\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    text = err.value.render()
    assert "task.transforms[0]: random_crop: padding" in text
    assert "task.transforms[1]" in text and "hflip" in text  # did you mean
    assert "task.transforms[2]: needs a 'name'" in text


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_crop_and_flip_on_uint8_match_the_float_definition(mode: str) -> None:
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    specs = [{"name": "random_crop", "padding": 3, "padding_mode": mode, "fill": 0.2}, {"name": "hflip"}]
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.3, 0.25]
    pipe = ImagePipeline(build_transforms(specs), mean=mean, std=std)
    torch.manual_seed(0)
    fast = pipe(images, train=True)  # crop and flip run on uint8, then one fused normalisation
    torch.manual_seed(0)
    x = images.float() / 255
    for t in pipe.transforms:
        x = t(x, train=True)
    slow = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(fast, slow)
    kwargs = {"value": 0.2} if mode == "constant" else {}
    padded = F.pad(images.float() / 255, (3, 3, 3, 3), mode=mode, **kwargs)
    for i in range(16):  # each image is the padded one (maybe mirrored) at one of the 7x7 offsets
        views = [padded[i, :, top:top + 12, left:left + 12] for top in range(7) for left in range(7)]
        assert any(torch.allclose(x[i], v) or torch.allclose(x[i], v.flip(-1)) for v in views)


def test_crop_then_flip_is_fused_with_identical_results() -> None:
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    transforms = build_transforms([{"name": "random_crop", "padding": 4, "padding_mode": "reflect"},
                                   {"name": "hflip"}])
    fused = ImagePipeline(transforms, mean=[0.5] * 3, std=[0.2] * 3)
    assert len(fused.transforms) == 1 and fused.transforms[0].mirror_p == 0.5
    assert transforms[0].mirror_p == 0  # the recipe's own transform objects are left alone
    torch.manual_seed(0)
    a = fused(images, train=True)
    torch.manual_seed(0)
    x = images
    for t in transforms:  # one after the other, unfused
        x = t(x, train=True)
    torch.testing.assert_close(a, (x.float() / 255 - 0.5) / 0.2)
