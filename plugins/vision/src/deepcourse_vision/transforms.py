"""Batched image transforms, run on the training device inside the task's steps.

The classic recipe decodes and augments one PIL image at a time in DataLoader workers; here every image is decoded
once into a uint8 tensor, and a whole batch is cropped, flipped, rotated... with a few tensor ops where the model
runs. Each transform knows what it does at evaluation time too (a random crop becomes a centre crop, a flip does
nothing), so one `task.transforms` list describes training and evaluation.

Randomness comes from torch's global generator on the batch's device, so `torch.manual_seed` (which the engine
sets from the recipe's seed, and saves with every checkpoint) makes augmentation reproducible.

Transforms work on float images in [0, 1]; the ones that only move pixels (crops, flips) also take the uint8
batch, so a crop + flip recipe converts to float once, at the end, fused with the dataset's mean/std
normalisation. A random crop followed by a horizontal flip is a single gather.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, cast

import torch
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError
from torch.nn import functional as F

from deepcourse.api import TRANSFORMS, RecipeError, call_builder, validate_options

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Fill = Annotated[float, Field(ge=0, le=1)]
PaddingMode = Literal["constant", "reflect", "replicate"]

__all__ = ["ImageTransform", "RandomCrop", "CenterCrop", "Resize", "RandomFlip", "RandomRotation", "GaussianNoise",
           "Cutout", "ImagePipeline", "TransformSpec", "build_transforms", "crop_at"]


class ImageTransform:
    """A transform of a float image batch [N, C, H, W]; `train` says whether to augment or evaluate.

    Transforms that only move pixels (crops, flips) set `moves_pixels = True` and also accept uint8 batches: the
    pipeline runs them before converting to float, on a quarter of the bytes. Those that set `per_sample = True`
    are also called with `epoch` and `index` (each sample's position in its split), in training."""

    moves_pixels = per_sample = False

    def __call__(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _apply_mask(p: float, n: int, device: torch.device) -> torch.Tensor | None:
    """Which samples a transform with probability `p` touches; None means all of them (no random draw)."""
    return None if p >= 1 else torch.rand(n, device=device) < p


def _where(mask: torch.Tensor | None, changed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-sample choice between two batches. Picks rows of [original; changed] with one index_select: on a CPU
    that is ~6x faster than torch.where with a broadcast [N, 1, 1, 1] mask, and it needs no host sync on a GPU."""
    if mask is None:
        return changed
    n = original.shape[0]
    index = torch.arange(n, device=original.device) + mask.long() * n
    return torch.cat([original, changed]).index_select(0, index)


def _fold(index: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Map coordinates that fall in the padding back into the image: mirror (reflect) or clamp (replicate)."""
    if mode == "replicate":
        return index.clamp(0, size - 1)
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop_at(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int, *,
            padding: int = 0, padding_mode: str = "reflect", mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image of the batch at its own (top, left) with one gather, no Python loop over samples.

    (top, left) are in the coordinates of the image padded by `padding` on each side; reflect/replicate padding
    is folded into the gather's index instead of being materialised (constant padding must be applied first).
    `mirror` (bool per sample) reads those crops right to left: a horizontal flip for free."""
    n, c, h, w = x.shape
    across = torch.arange(width, device=x.device).expand(n, width)
    if mirror is not None:
        across = torch.where(mirror.view(n, 1), width - 1 - across, across)
    rows = top.view(n, 1) - padding + torch.arange(height, device=x.device)
    cols = left.view(n, 1) - padding + across
    if padding:
        rows, cols = _fold(rows, h, padding_mode), _fold(cols, w, padding_mode)
    index = (rows.view(n, height, 1) * w + cols.view(n, 1, width)).view(n, 1, height * width)
    return x.reshape(n, c, h * w).gather(2, index.expand(n, c, height * width)).view(n, c, height, width)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise RecipeError(f"task.transforms: cannot crop {size}x{size} out of {h}x{w} images; lower the crop size "
                          f"or add padding")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def _pad(x: torch.Tensor, padding: int, mode: str, fill: float) -> torch.Tensor:
    if padding == 0:
        return x
    if mode == "constant":  # fill is on the [0, 1] scale; uint8 images are on [0, 255]
        value = round(fill * 255) if x.dtype == torch.uint8 else fill
        return F.pad(x, (padding,) * 4, mode="constant", value=value)
    return F.pad(x, (padding,) * 4, mode=mode)


@TRANSFORMS.register("random_crop")
class RandomCrop(ImageTransform):
    """Random crop after padding (training); centre crop of the same size at evaluation.

    Pads by `padding`, then crops `size` pixels (default: the input size) at a random place; at evaluation a centre
    crop of `size` (nothing when it is the input size). CIFAR's standard augmentation is padding 4."""

    moves_pixels = True

    def __init__(self, size: PositiveInt | None = None, padding: NonNegInt = 0,
                 padding_mode: PaddingMode = "constant", fill: Fill = 0.0) -> None:
        self.size, self.padding, self.padding_mode, self.fill = size, padding, padding_mode, fill
        self.mirror_p = 0.0  # set by ImagePipeline when an hflip follows: flipped in the same gather

    def _size(self, x: torch.Tensor) -> int:
        return self.size or x.shape[-1]

    def __call__(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        size = self._size(x)
        if not train:
            return x if size == x.shape[-1] == x.shape[-2] else center_crop(x, size)
        h, w = x.shape[-2] + 2 * self.padding, x.shape[-1] + 2 * self.padding
        if size > min(h, w):
            raise RecipeError(f"task.transforms: random_crop of {size} px is larger than the padded "
                              f"{h}x{w} images")
        if self.padding_mode == "reflect" and self.padding >= min(x.shape[-2:]):
            raise RecipeError(f"task.transforms: random_crop: reflect padding of {self.padding} px needs images "
                              f"larger than that (got {x.shape[-1]} px)")
        n = x.shape[0]
        top = torch.randint(0, h - size + 1, (n,), device=x.device)
        left = torch.randint(0, w - size + 1, (n,), device=x.device)
        mirror = torch.rand(n, device=x.device) < self.mirror_p if self.mirror_p else None  # as RandomFlip draws
        if self.padding_mode == "constant":
            return crop_at(_pad(x, self.padding, "constant", self.fill), top, left, size, size, mirror=mirror)
        return crop_at(x, top, left, size, size, padding=self.padding, padding_mode=self.padding_mode,
                       mirror=mirror)

    def ten_crop(self, x: torch.Tensor) -> list[torch.Tensor]:
        """AlexNet's test-time views: the four corner crops and the centre crop of the padded image, and their
        mirror images (Krizhevsky et al. 2012, section 4.1)."""
        size = self._size(x)
        padded = _pad(x, self.padding, self.padding_mode, self.fill)
        h, w = padded.shape[-2:]
        corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]
        crops = [padded[..., top:top + size, left:left + size] for top, left in corners]
        return crops + [c.flip(-1) for c in crops]


@TRANSFORMS.register("center_crop")
class CenterCrop(ImageTransform):
    """Keep the central `size` x `size` pixels, in training and evaluation alike."""

    moves_pixels = True

    def __init__(self, size: PositiveInt) -> None:
        self.size = size

    def __call__(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        return center_crop(x, self.size)


@TRANSFORMS.register("resize")
class Resize(ImageTransform):
    """Resize to `size` x `size`, in training and evaluation alike.

    E.g. 28 px MNIST to AlexNet's 227 px, on the device instead of re-encoding the dataset. Antialiasing applies
    when shrinking with bilinear/bicubic."""

    def __init__(self, size: PositiveInt, mode: Literal["bilinear", "bicubic", "nearest", "area"] = "bilinear",
                 antialias: bool = True) -> None:
        self.size, self.mode, self.antialias = size, mode, antialias

    def __call__(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        smooth = self.mode in ("bilinear", "bicubic")
        out = F.interpolate(x, size=(self.size, self.size), mode=self.mode,
                            align_corners=False if smooth else None, antialias=self.antialias and smooth)
        return out.clamp_(0, 1) if self.mode == "bicubic" else out


class RandomFlip(ImageTransform):
    """Mirror each image with probability p along `dim` (-1: left-right, -2: upside down); training only."""

    moves_pixels = True

    def __init__(self, p: float = 0.5, dim: int = -1) -> None:
        self.p, self.dim = p, dim

    def __call__(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        if not train or self.p == 0:
            return x
        return _where(torch.rand(x.shape[0], device=x.device) < self.p, x.flip(self.dim), x)


@TRANSFORMS.register("hflip")
def hflip(p: Probability = 0.5) -> RandomFlip:
    """Random left-right mirror with probability p (training only): natural images stay natural."""
    return RandomFlip(p, dim=-1)


@TRANSFORMS.register("vflip")
def vflip(p: Probability = 0.5) -> RandomFlip:
    """Random upside-down flip with probability p (training only): for images without an up, e.g. microscopy."""
    return RandomFlip(p, dim=-2)


@TRANSFORMS.register("rotation")
class RandomRotation(ImageTransform):
    """Random rotation by up to `degrees` either way about the centre (training only).

    Uncovered corners get `fill`. One affine grid and one bilinear grid_sample for the whole batch."""

    def __init__(self, degrees: Annotated[float, Field(gt=0, le=180)] = 15.0, p: Probability = 1.0,
                 fill: Fill = 0.0) -> None:
        self.degrees, self.p, self.fill = degrees, p, fill

    def __call__(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        if not train or self.p == 0:
            return x
        n = x.shape[0]
        angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(self.degrees)
        mask = _apply_mask(self.p, n, x.device)
        if mask is not None:
            angle = angle * mask
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        # sample (x - fill) with zero padding, then add fill back: uncovered pixels become exactly `fill`
        return F.grid_sample(x - self.fill, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + self.fill


@TRANSFORMS.register("gaussian_noise")
class GaussianNoise(ImageTransform):
    """Add N(0, std^2) noise to each pixel (training only), then clip to [0, 1] unless clip = false."""

    def __init__(self, std: Annotated[float, Field(gt=0)] = 0.05, p: Probability = 1.0, clip: bool = True) -> None:
        self.std, self.p, self.clip = std, p, clip

    def __call__(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        if not train or self.p == 0:
            return x
        noisy = x + torch.randn_like(x) * self.std
        if self.clip:
            noisy = noisy.clamp(0, 1)
        return _where(_apply_mask(self.p, x.shape[0], x.device), noisy, x)


@TRANSFORMS.register("cutout")
class Cutout(ImageTransform):
    """Cutout: blank a random `size` x `size` square with `fill` (DeVries & Taylor 2017; training only).

    The square's centre is uniform over the image and it may hang over the border, as in the paper."""

    def __init__(self, size: PositiveInt = 8, p: Probability = 1.0, fill: Fill = 0.5) -> None:
        self.size, self.p, self.fill = size, p, fill

    def __call__(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        if not train or self.p == 0:
            return x
        n, _, h, w = x.shape
        cy = torch.randint(0, h, (n, 1, 1), device=x.device)
        cx = torch.randint(0, w, (n, 1, 1), device=x.device)
        rows = torch.arange(h, device=x.device).view(1, h, 1) - cy + self.size // 2
        cols = torch.arange(w, device=x.device).view(1, 1, w) - cx + self.size // 2
        hole = ((rows >= 0) & (rows < self.size) & (cols >= 0) & (cols < self.size)).unsqueeze(1)
        mask = _apply_mask(self.p, n, x.device)
        if mask is not None:
            hole = hole & mask.view(n, 1, 1, 1)
        return x.masked_fill(hole, self.fill)


# -- recipe plumbing -------------------------------------------------------------------------------------------
def _check_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Validate one `task.transforms` entry while the recipe is checked, before any data is loaded."""
    name = spec.get("name")
    if not isinstance(name, str):
        raise PydanticCustomError("transform", "{problem}", {
            "problem": "needs a 'name', one of: " + ", ".join(TRANSFORMS.names())})
    if name not in TRANSFORMS:
        raise PydanticCustomError("transform", "{problem}", {"problem": TRANSFORMS.unknown_message(name)})
    options = {k: v for k, v in spec.items() if k != "name"}
    _, problems = validate_options(TRANSFORMS.get(name), options, loc="")
    if problems:
        raise PydanticCustomError("transform", "{problem}", {"problem": f"{name}: " + "; ".join(problems)})
    return spec


TransformSpec = Annotated[dict[str, Any], AfterValidator(_check_spec)]
"""One entry of `task.transforms`: `{name = "random_crop", padding = 4}`."""


def build_transforms(specs: Sequence[Mapping[str, Any]], loc: str = "task.transforms") -> list[ImageTransform]:
    out = []
    for i, spec in enumerate(specs):
        options = {k: v for k, v in spec.items() if k != "name"}
        out.append(call_builder(TRANSFORMS.get(spec["name"]), options, loc=f"{loc}[{i}]", provided={}))
    return out


def _fuse(transforms: Sequence[ImageTransform]) -> list[ImageTransform]:
    """Merge each random_crop + hflip pair into one gather (the crop reads flipped images right to left). The
    random draws happen in the same order, so the result is identical, one pass over the batch cheaper."""
    out: list[ImageTransform] = []
    for t in transforms:
        before = out[-1] if out else None
        if isinstance(t, RandomFlip) and t.dim == -1 and isinstance(before, RandomCrop) and not before.mirror_p:
            fused = copy.copy(before)
            fused.mirror_p = t.p
            out[-1] = fused
        else:
            out.append(t)
    return out


class ImagePipeline:
    """uint8 batch -> transforms -> (x - mean) / std as floats, on whatever device the batch is on.

    Transforms see floats in [0, 1], except the pixel-moving ones at the front, which run on the uint8 batch."""

    def __init__(self, transforms: Sequence[ImageTransform], mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        self.transforms = _fuse(transforms)
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self._stats: dict[tuple[torch.device, float], tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def to_float(images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            return images.float().div_(255)
        return images.float()

    def _affine(self, device: torch.device, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) with (x / scale - mean) / std = x * a + b, per channel, cached per device."""
        key = (device, scale)
        if key not in self._stats:
            mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            self._stats[key] = (1 / (std * scale), -mean / std)
        return self._stats[key]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std as floats; a uint8 batch is converted and normalised in one pass."""
        if self.mean is None or self.std is None:
            return self.to_float(x)
        if x.dtype == torch.uint8:
            a, b = self._affine(x.device, 255.0)
            return x.float().mul_(a).add_(b)
        a, b = self._affine(x.device, 1.0)
        return torch.addcmul(b, x.float(), a)

    def run(self, x: torch.Tensor, transforms: Sequence[ImageTransform], *, train: bool, **sample: Any) -> torch.Tensor:
        """Apply `transforms`; pixel-moving ones run on uint8, the first other one gets floats in [0, 1]."""
        for t in transforms:
            if x.dtype == torch.uint8 and not t.moves_pixels:
                x = self.to_float(x)
            x = t(x, train=train, **sample) if t.per_sample else t(x, train=train)
        return x

    def __call__(self, images: torch.Tensor, *, train: bool, **sample: Any) -> torch.Tensor:
        return self.normalize(self.run(images, self.transforms, train=train, **sample))

    def ten_crop_index(self) -> int:
        """Position of the last random crop: test-time ten-crop views are taken where it crops."""
        found = [i for i, t in enumerate(self.transforms) if isinstance(t, RandomCrop)]
        if not found:
            raise RecipeError("eval.tta: 'ten_crop' takes its crops where a random_crop transform crops; "
                              "task.transforms has none (use tta = \"flip\", or add random_crop)")
        return found[-1]

    def views(self, images: torch.Tensor, tta: str) -> list[torch.Tensor]:
        """Evaluation views of a batch: one (no TTA), the image and its mirror (flip), or ten crops."""
        if tta == "none":
            return [self(images, train=False)]
        if tta == "flip":
            x = self(images, train=False)
            return [x, x.flip(-1)]
        if tta == "ten_crop":
            i = self.ten_crop_index()
            x = self.run(images, self.transforms[:i], train=False)
            crop = cast(RandomCrop, self.transforms[i])  # ten_crop_index() found it
            rest = self.transforms[i + 1:]
            return [self.normalize(self.run(v, rest, train=False)) for v in crop.ten_crop(x)]
        raise ValueError(f"unknown tta {tta!r}")
