"""Data-dependent initialization: a module that defines `init_from_data` sees a fixed sample of the training data,
its own input, once, in forward order, in eval mode and without gradients, before a new run trains (never on resume);
a user error it raises stops the run before a run directory exists, naming the module."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from core_support import TOY_RECIPE
from torch import nn

from deepcourse.api import DataInit, UserError
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.schema import Recipe
from deepcourse.testing import cli


class Unit(nn.Linear):
    """LSUV-style: rescales its weights so that its outputs have unit standard deviation on the sample, and freezes
    its bias; it records what it saw."""

    init_samples = 64

    def __init__(self, *args: Any, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail, self.seen = fail, []

    def init_from_data(self, x: torch.Tensor) -> None:
        if self.fail:
            raise UserError("this sample has too few rows")
        self.seen.append((x.clone(), self.training, torch.is_grad_enabled()))
        std = super().forward(x).std()
        self.weight.data /= std
        self.bias.data /= std
        self.bias.requires_grad = False


def layered(in_features: int, num_classes: int, fail: bool = False) -> nn.Module:
    return nn.Sequential(Unit(in_features, 16), nn.Dropout(0.9), nn.ReLU(), Unit(16, num_classes, fail=fail))


@pytest.fixture()
def recipe(plugin_site: Path) -> Recipe:
    return load_recipe(None, ["train.max_steps=2"], data=_toml())


def _toml() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(TOY_RECIPE)


def build(recipe: Recipe, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False, artifacts: Any = None) -> Any:
    from deepcourse.api import TASKS
    from deepcourse.training.accelerator import make_accelerator
    from deepcourse.training.build import build_run

    monkeypatch.setattr(TASKS.get("toy-classification"), "build_model",
                        lambda self, model, facts: layered(facts["in_features"], facts["num_classes"], fail))
    return build_run(recipe, make_accelerator(recipe, trackers=False, warn=False), artifacts=artifacts,
                     resuming=artifacts is not None)


def test_modules_see_their_own_input_in_forward_order(recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    run = build(recipe, monkeypatch)
    first, _, _, second = run.model
    assert isinstance(first, DataInit) and len(first.seen) == len(second.seen) == 1
    x, training, grad = first.seen[0]
    assert x.shape == (64, 8) and not training and not grad  # init_samples; eval mode, no gradients
    # the second saw the first's output after the first was initialised, with dropout off (eval mode)
    assert torch.allclose(second.seen[0][0], torch.relu(first(x)))
    assert float(first(x).detach().std()) == pytest.approx(1.0, rel=1e-4)
    assert run.model.training  # train mode restored
    trained = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert id(first.bias) not in trained and id(first.weight) in trained  # what it froze is not optimised


def test_the_sample_is_the_seeds(recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    a = build(recipe, monkeypatch).model[0].seen[0][0]
    b = build(recipe, monkeypatch).model[0].seen[0][0]
    c = build(recipe.model_copy(update={"seed": recipe.seed + 1}), monkeypatch).model[0].seen[0][0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_resumed_run_is_not_initialised_again(recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    run = build(recipe, monkeypatch, artifacts={"classes": 3})
    assert run.model[0].seen == []


def test_a_user_error_exits_2_naming_the_module(tmp_path: Path, plugin_site: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from deepcourse.api import TASKS

    recipe_file = tmp_path / "toy.toml"
    recipe_file.write_text(TOY_RECIPE)
    monkeypatch.setattr(TASKS.get("toy-classification"), "build_model",
                        lambda self, model, facts: layered(facts["in_features"], facts["num_classes"], fail=True))
    out = CliRunner().invoke(cli, ["run", str(recipe_file), "--runs-root", str(tmp_path / "runs"), "--no-report",
                                   "--set", "train.max_steps=1"])
    assert out.exit_code == 2, out.output
    assert "model: 3.init_from_data: this sample has too few rows" in out.output
    assert not list((tmp_path / "runs").glob("*/*"))  # no run directory left behind
