"""Tests of ${dist}: the task's pieces, and the recipe end to end (train, evaluate, predict)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from deepcourse.api import DATASETS, MODELS, TASKS, load_plugins

load_plugins()  # what the command line does first: find the installed plugins through their entry points
RECIPE = Path(__file__).parents[1] / "recipes" / "${name}.toml"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepcourse", *args], capture_output=True, text=True)


def test_components_are_registered_by_the_plugin() -> None:
    for registry, name in ((TASKS, "${name}-regression"), (DATASETS, "${name}_waves"), (MODELS, "${name}_mlp")):
        assert registry.entry(name).origin == "${name}"


def test_training_step_lowers_the_loss() -> None:
    torch.manual_seed(0)
    task, model = TASKS.build("${name}-regression"), MODELS.build("${name}_mlp", in_features=1)
    batch = {"x": torch.linspace(-1, 1, 64)[:, None]}
    batch["y"] = torch.sin(3 * batch["x"])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    first = float(task.training_step(model, batch))
    for _ in range(50):
        optimizer.zero_grad()
        task.training_step(model, batch).backward()
        optimizer.step()
    assert float(task.training_step(model, batch)) < first / 2


def test_recipe_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = cli("run", str(RECIPE), "--run-dir", str(run), "--set", "train.epochs=3", "--set", "train.progress=false",
              "--no-report")
    assert out.returncode == 0, out.stderr
    metrics = json.loads(cli("evaluate", str(run), "--json").stdout)
    assert metrics["mse"] < 0.6  # the variance of sin(3x) on [-1, 1] is about 0.4; noise adds 0.01
    prediction = json.loads(cli("predict", str(run), "0.5", "--json").stdout)
    assert prediction["x"] == 0.5
