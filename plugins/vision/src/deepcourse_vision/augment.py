"""The fast CIFAR method's augmentations (airbench, Jordan 2024), batched on the tensor as in `transforms`:

- `alternating_flip`: derandomised flips. A fixed random half of the images is mirrored in even epochs and the other
  half in odd ones, so each image is seen both ways every two epochs (random flips leave a quarter of the images
  unflipped, or flipped, two epochs running). It needs the epoch and each image's identity: the task passes
  `Task.epoch` (which the engine sets) and the sample's index in its split;
- `translate`: shift each image by up to `pixels` pixels each way (reflect padding, then a random crop);
- `multi_crop_views`: airbench's test-time augmentation level 2 (`eval.tta = "multi_crop"`): the image and its
  mirror, weighted 1/4 each, and the two 1-pixel diagonal shifts and their mirrors, 1/8 each, averaged as logits.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch.nn import functional as F

from deepcourse.api import TRANSFORMS, RecipeError

from .transforms import ImagePipeline, ImageTransform, RandomCrop, _where

#: weights of the multi-crop views, in `multi_crop_views`' order
MULTI_CROP_WEIGHTS = (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)


def half_of(index: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed pseudo-random bit per sample index (about half of them set): Knuth's multiplicative hash, whose high
    bits are well mixed, computed on the device (no generator state to save with a checkpoint)."""
    mixed = (index.long() * 2654435761 + seed * 40503 + 12345) % (1 << 32)
    return ((mixed >> 16) & 1).bool()


@TRANSFORMS.register("alternating_flip")
class AlternatingFlip(ImageTransform):
    """Mirror a fixed random half of the images in even epochs, the other half in odd ones (training only).

    airbench's derandomised flip: every image is seen both ways in any two consecutive epochs. `seed` picks the
    half; the task gives the epoch and each image's index in its split."""

    moves_pixels = per_sample = True

    def __init__(self, seed: Annotated[int, Field(ge=0)] = 0) -> None:
        self.seed = seed

    def __call__(self, x: torch.Tensor, *, train: bool, epoch: int = 0,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        if not train:
            return x
        if index is None:
            raise RecipeError("task.transforms: alternating_flip needs each image's index in its split, which this "
                              "task does not give; use hflip")
        flip = half_of(index.to(x.device), self.seed) ^ bool(epoch % 2)
        return _where(flip, x.flip(-1), x)


@TRANSFORMS.register("translate")
def translate(pixels: Annotated[int, Field(gt=0)] = 2) -> RandomCrop:
    """Shift each image by a random offset in [-pixels, pixels] each way (training only).

    airbench's translate: reflect padding by `pixels`, then a random crop of the original size (random_crop with
    reflect padding, under the name the method uses)."""
    return RandomCrop(padding=pixels, padding_mode="reflect")


def multi_crop_views(pipeline: ImagePipeline, images: torch.Tensor) -> list[torch.Tensor]:
    """The six views of airbench's TTA level 2 (weights `MULTI_CROP_WEIGHTS`), normalised as for evaluation."""
    x = pipeline(images, train=False)
    h, w = x.shape[-2:]
    padded = F.pad(x, (1,) * 4, mode="reflect")
    shifted = [padded[..., 0:h, 0:w], padded[..., 2:h + 2, 2:w + 2]]
    return [v for view in (x, *shifted) for v in (view, view.flip(-1))]
