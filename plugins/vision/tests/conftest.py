"""Fixtures for the vision plugin tests: a private image cache, tiny generated datasets, one CPU thread.

Everything here is generated on the spot (a few dozen small images), so the tests need neither the network nor
../shared/data, and run in seconds.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from vision_fixtures import make_imagefolder, make_parquet

from deepcourse.api import load_plugins

# The explicit discovery step the command line takes first: every installed plugin's components are registered.
load_plugins()

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
