"""Tiny generated image datasets for the vision tests (a module, not the conftest, so tests can import it by a
name no other test folder uses)."""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepcourse.api import shipped_recipes

RECIPES = shipped_recipes()["quickstart"].parent  # the recipes that ship with deepcourse


def class_image(label: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """A learnable toy image: a bright bar whose position encodes the class, plus noise."""
    img = rng.integers(0, 60, (size, size, channels), dtype=np.uint8)
    row = (label * size) // 4 % size
    img[row:row + max(1, size // 6)] = 230
    return img[..., 0] if channels == 1 else img


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A decompression bomb: a PNG of a few dozen bytes whose header says width x height grayscale pixels (the data
    is the start of the first row only: nothing reads this far, the size is refused from the header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def make_imagefolder(root: Path, classes: Sequence[str] = ("a", "b", "c"), per_class: int = 6, size: int = 12,
                     channels: int = 3, splits: Sequence[str] = ("train", "develop", "test"), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{i:03d}.png").write_bytes(png_bytes(class_image(label, size, channels, rng)))
    return root


def make_parquet(path: Path, n: int = 40, size: int = 28, channels: int = 1, classes: int = 10,
                 corrupt_rows: Sequence[int] = (), seed: int = 0) -> Path:
    """An MNIST-like Parquet file (columns img: PNG, label: ClassLabel), as in ../shared/data."""
    from datasets import ClassLabel, Dataset, Features, Image

    rng = np.random.default_rng(seed)
    labels = [i % classes for i in range(n)]
    images = [{"bytes": b"garbage" if i in corrupt_rows else png_bytes(class_image(y, size, channels, rng)),
               "path": None} for i, y in enumerate(labels)]
    features = Features({"img": Image(), "label": ClassLabel(names=[str(i) for i in range(classes)])})
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict({"img": images, "label": labels}, features=features).to_parquet(str(path))
    return path
