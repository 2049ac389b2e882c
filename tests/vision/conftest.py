"""Fixtures for the vision plugin tests: a private image cache, tiny generated datasets, one CPU thread.

Everything here is generated on the spot (a few dozen small images), so the tests need neither the network nor
../shared/data, and run in seconds.
"""
from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcourse import plugins

# Discover the plugin through its entry point before any test module imports deepcourse_vision directly, so its
# components are registered with origin "vision" (as `deepcourse list` shows them), not a module name.
plugins.load_plugins()

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Decoded-image cache and HF datasets cache in temporary folders; offline; one thread (tiny tensors, and a
    shared CPU where spinning OpenMP threads slow everything down)."""
    import datasets

    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("DEEPCOURSE_CACHE", str(base / "dc-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", base / "hf-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture()
def image_root(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "chars")


@pytest.fixture()
def mnist_like(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$DEEPCOURSE_DATA/mnist/{train,test}.parquet with 60 + 20 tiny images."""
    root = tmp_path / "data"
    make_parquet(root / "mnist" / "train.parquet", n=60)
    make_parquet(root / "mnist" / "test.parquet", n=20, seed=1)
    monkeypatch.setenv("DEEPCOURSE_DATA", str(root))
    return root
