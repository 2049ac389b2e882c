"""Tests of ${dist}: the model's shapes, its registration, and the recipe end to end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from deepcourse.api import MODELS, load_plugins

load_plugins()  # what the command line does first: find the installed plugins through their entry points
RECIPE = Path(__file__).parents[1] / "recipes" / "${name}.toml"


def test_model_is_registered_by_the_plugin() -> None:
    assert MODELS.entry("${name}_net").origin == "${name}"


def test_output_shape() -> None:
    model = MODELS.build("${name}_net", num_classes=10, in_channels=1, image_size=8, width=8)
    assert model(torch.zeros(4, 1, 8, 8)).shape == (4, 10)


def test_recipe_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "deepcourse", "run", str(RECIPE), "--run-dir", str(tmp_path / "run"),
                          "--set", "train.max_steps=5", "--set", "train.progress=false", "--no-report"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
