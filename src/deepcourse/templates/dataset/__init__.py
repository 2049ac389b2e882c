"""${dist}: adds the dataset `${name}_stripes` (importing this module registers it)."""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from deepcourse.api import DATASETS
from deepcourse_vision.data import ImageData, ImageSplit

SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def stripes(n: int, size: int, seed: int) -> ImageSplit:
    """n noisy size x size images: label 0 has horizontal stripes, label 1 vertical ones."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    rows = (torch.arange(size) // 2 % 2).float()
    horizontal = rows[:, None].expand(size, size)
    images = torch.where(labels[:, None, None] == 0, horizontal, horizontal.T)
    images = (images * 200 + torch.rand(n, size, size, generator=g) * 55).to(torch.uint8)
    return ImageSplit(images[:, None], labels)


@DATASETS.register("${name}_stripes", task="image-classification")  # the task it feeds
def ${name}_stripes(splits: tuple[str, ...], data_dir: str | None = None,
                    size: Annotated[int, Field(ge=4)] = 16,
                    samples: Annotated[int, Field(gt=0)] = 512) -> ImageData:
    """Horizontal vs vertical stripes, generated on the fly (train/validation/test)."""
    made = {s: stripes(samples if s == "train" else samples // 4, size, SPLIT_SEEDS[s])
            for s in splits if s in SPLIT_SEEDS}
    return ImageData(made, class_names=["horizontal", "vertical"], source="${name}_stripes (generated)")
