"""Tests of ${dist}: the dataset's splits and labels, its registration, and the recipe end to end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from deepcourse.api import DATASETS, load_plugins

load_plugins()  # what the command line does first: find the installed plugins through their entry points
RECIPE = Path(__file__).parents[1] / "recipes" / "${name}.toml"


def test_dataset_is_registered_by_the_plugin() -> None:
    assert DATASETS.entry("${name}_stripes").origin == "${name}"


def test_splits_and_labels() -> None:
    data = DATASETS.build("${name}_stripes", splits=("train", "test"), size=8, samples=64)
    assert set(data.splits) == {"train", "test"}
    train = data.splits["train"]
    assert train.images.shape == (64, 1, 8, 8) and str(train.images.dtype) == "torch.uint8"
    assert set(train.labels.tolist()) <= {0, 1}


def test_recipe_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "deepcourse", "run", str(RECIPE), "--run-dir", str(tmp_path / "run"),
                          "--set", "train.max_steps=5", "--set", "train.progress=false", "--no-report"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
