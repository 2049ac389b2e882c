"""Shared fixtures of the sequence plugin's tests: the toy corpus in data/mini and a private datasets cache."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deepcourse.api import load_plugins

load_plugins()  # the explicit discovery step the command line takes first
pytest.importorskip("deepcourse_sequence", reason="pip install -e plugins/sequence first")
torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation (and the CI box is shared)

MINI = Path(__file__).parent / "data" / "mini"


@pytest.fixture(autouse=True, scope="session")
def private_datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the Arrow caches of files written by tests out of the user's ~/.cache/huggingface."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf-datasets")
        yield


@pytest.fixture(scope="session")
def mini() -> Path:
    """The toy corpus (train/dev/test.txt, columns token pos chunk ner): sentences written for these tests."""
    return MINI


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def write():
    """write(path, text) -> path, in UTF-8."""
    return _write
