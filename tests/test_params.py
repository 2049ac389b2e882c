"""Parameter groups (`optimizer.groups`), frozen parameters (`train.freeze`) and starting weights
(`model.init_from`): what the optimizer holds, what training leaves untouched, and what a run reports."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from core_support import TOY_RECIPE, run_cli
from safetensors.torch import load_file, save_file

from deepcourse.errors import RecipeError
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.schema import Recipe

SGD_DECAY = ["optimizer.weight_decay=0.001"]


def toy(tmp_path: Path, *overrides: str, text: str = TOY_RECIPE) -> Recipe:
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return load_recipe(path, list(overrides))


def with_groups(tmp_path: Path, groups: str, *overrides: str) -> Recipe:
    return toy(tmp_path, f"optimizer.groups={groups}", *overrides)


def toy_model(recipe: Recipe) -> torch.nn.Module:
    """The toy MLP: parameters 0.weight, 0.bias (first layer), 3.weight, 3.bias (head)."""
    from deepcourse.training.build import build_model, build_task

    return build_model(build_task(recipe), recipe.model, {"in_features": 8, "num_classes": 3})


def names_by_group(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[list[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [sorted(name_of[id(p)] for p in g["params"]) for g in optimizer.param_groups]


def fit(recipe: Recipe, run_dir: Path, resume: Path | None = None) -> dict[str, Any]:
    from deepcourse.training.loop import fit as fit_

    return fit_(recipe, run_dir=None if resume else run_dir, resume=resume).summary


def checkpoint_weights(run: Path) -> list[dict[str, torch.Tensor]]:
    """The weights of every kept checkpoint, oldest first."""
    return [load_file(str(c / "model.safetensors")) for c in sorted((run / "checkpoints").glob("step-*"))]


# -- parameter groups ---------------------------------------------------------------------------------------------
def test_groups_scale_rate_and_decay_as_declared(plugin_site, tmp_path: Path) -> None:
    from deepcourse.training.build import build_optimizer

    recipe = with_groups(tmp_path, "[{match = '0', lr_scale = 0.1, weight_decay_scale = 0}]", *SGD_DECAY)
    model = toy_model(recipe)
    optimizer = build_optimizer(recipe, model)
    assert names_by_group(optimizer, model) == [["3.bias", "3.weight"], ["0.bias", "0.weight"]]  # the default first
    default, body = optimizer.param_groups
    assert (default["lr"], default["weight_decay"]) == (0.05, 0.001)
    assert body["lr"] == pytest.approx(0.005) and body["weight_decay"] == 0


def test_absolute_values_replace_the_scales(plugin_site, tmp_path: Path) -> None:
    from deepcourse.training.build import build_optimizer

    recipe = with_groups(tmp_path, "[{match = '*.bias', lr = 0.3, weight_decay = 0.5}]", *SGD_DECAY)
    optimizer = build_optimizer(recipe, toy_model(recipe))
    assert (optimizer.param_groups[1]["lr"], optimizer.param_groups[1]["weight_decay"]) == (0.3, 0.5)
    with pytest.raises(RecipeError, match=r"optimizer\.groups\[0\].*set lr or lr_scale, not both"):
        with_groups(tmp_path, "[{match = '*.bias', lr = 0.3, lr_scale = 2.0}]")


def test_the_first_matching_group_wins(plugin_site, tmp_path: Path) -> None:
    from deepcourse.training.build import build_optimizer

    recipe = with_groups(tmp_path, "[{match = '0.bias', lr_scale = 2.0}, {match = '0', lr_scale = 0.5}]")
    model = toy_model(recipe)
    optimizer = build_optimizer(recipe, model)
    assert names_by_group(optimizer, model) == [["3.bias", "3.weight"], ["0.bias"], ["0.weight"]]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.1, 0.025])


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "linear", "step", "exponential", "inverse_time"])
def test_schedules_keep_the_groups_ratio(plugin_site, tmp_path: Path, schedule: str) -> None:
    from deepcourse.training.build import build_optimizer, build_scheduler

    recipe = with_groups(tmp_path, "[{match = '0', lr_scale = 0.1}]", f"scheduler.name={schedule}",
                         *(["scheduler.step_epochs=1"] if schedule == "step" else []))
    optimizer = build_optimizer(recipe, toy_model(recipe))
    scheduler = build_scheduler(recipe, optimizer, steps_per_epoch=5, total_steps=20)
    for _ in range(19):
        default, body = (g["lr"] for g in optimizer.param_groups)
        assert body == pytest.approx(0.1 * default)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "nadam", "rmsprop", "adagrad", "adadelta", "lab:toy_sgd"])
def test_every_optimizer_takes_groups(plugin_site, tmp_path: Path, name: str) -> None:
    from deepcourse.training.build import build_optimizer

    lab = name.startswith("lab:")
    text = TOY_RECIPE.replace('name = "sgd"\nlr = 0.05\nmomentum = 0.9', f'name = "{name}"')
    recipe = toy(tmp_path, "optimizer.groups=[{match = '0', lr_scale = 0.5}]",
                 *([] if lab else ["optimizer.weight_decay=0.01"]), text=text)
    model = toy_model(recipe)
    optimizer = build_optimizer(recipe, model)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.5 * optimizer.param_groups[0]["lr"])
    model(torch.randn(4, 8)).sum().backward()
    before = model[0].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model[0].weight)
    if lab:  # an update rule without weight decay: a group cannot scale what it does not have
        with pytest.raises(RecipeError, match=r"optimizer\.groups\[0\].*has no weight_decay"):
            build_optimizer(toy(tmp_path, "optimizer.groups=[{match = '0', weight_decay_scale = 0.0}]", text=text),
                            model)


def test_a_pattern_that_matches_nothing_names_the_key_and_real_names(plugin_site, tmp_path: Path) -> None:
    from deepcourse.training.build import build_optimizer

    recipe = with_groups(tmp_path, "[{match = '*.bias'}, {match = 'layer1'}]")
    with pytest.raises(RecipeError) as caught:
        build_optimizer(recipe, toy_model(recipe))
    assert "optimizer.groups[1].match: 'layer1' matches no parameter" in str(caught.value)
    assert "0.weight" in str(caught.value)
    with pytest.raises(RecipeError, match=r"optimizer\.groups\[0\]\.lr_scal: unknown key.*lr_scale"):
        with_groups(tmp_path, "[{match = '0', lr_scal = 0.1}]")
    with pytest.raises(RecipeError, match=r"optimizer\.groups\[0\]\.lr_scale"):
        with_groups(tmp_path, "[{match = '0', lr_scale = 0.0}]")


def test_a_bad_pattern_exits_2_before_a_run_directory(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "run"
    done = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set",
                    "optimizer.groups=[{match = 'head', lr_scale = 10.0}]"], cli_env)
    assert done.returncode == 2, done.stderr
    assert "optimizer.groups[0].match: 'head' matches no parameter" in done.stderr
    assert "Traceback" not in done.stderr and not run.exists()


# -- freezing -----------------------------------------------------------------------------------------------------
def test_frozen_parameters_stay_bit_identical_and_leave_the_optimizer(plugin_site, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from deepcourse.training.accelerator import make_accelerator
    from deepcourse.training.build import build_run

    start = tmp_path / "start.safetensors"
    model = toy_model(toy(tmp_path))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(start))
    recipe = toy(tmp_path, "train.freeze=['0']", f"model.init_from={start}", *SGD_DECAY, "train.epochs=2")
    pieces = build_run(recipe, make_accelerator(recipe))
    assert sum(len(g["params"]) for g in pieces.optimizer.param_groups) == 2  # the head's weight and bias
    with caplog.at_level(logging.INFO, logger="deepcourse"):
        fit(recipe, tmp_path / "run")
    assert "train.freeze: 2 tensors (288 parameters) frozen for the whole run" in caplog.text
    final, initial = checkpoint_weights(tmp_path / "run")[-1], load_file(str(start))
    assert torch.equal(final["0.weight"], initial["0.weight"]) and torch.equal(final["0.bias"], initial["0.bias"])
    assert not torch.equal(final["3.weight"], initial["3.weight"])


def test_freezing_everything_is_an_error(plugin_site, tmp_path: Path) -> None:
    from deepcourse.training.accelerator import make_accelerator
    from deepcourse.training.build import build_run

    for freeze, said in (("['*']", "every parameter of the model;"),
                         ("['0', {match = '3', until_epoch = 2}]", "every parameter of the model in epoch 1")):
        recipe = toy(tmp_path, f"train.freeze={freeze}")
        with pytest.raises(RecipeError, match=said):
            build_run(recipe, make_accelerator(recipe))
    with pytest.raises(RecipeError, match=r"train\.freeze\[0\]: 'stem' matches no parameter"):
        recipe = toy(tmp_path, "train.freeze=[{match = 'stem', from_epoch = 1}]")
        build_run(recipe, make_accelerator(recipe))
    with pytest.raises(RecipeError, match=r"train\.freeze\[1\]: give from_epoch or until_epoch, not both"):
        toy(tmp_path, "train.freeze=['0', {match = '3', from_epoch = 1, until_epoch = 2}]")


def test_from_epoch_freezes_at_that_epoch_and_a_resumed_run_too(plugin_site, tmp_path: Path) -> None:
    """Trained for 2 epochs then frozen (13 steps an epoch): the same weights whether or not the run was stopped in
    its frozen third epoch and resumed."""
    from deepcourse.training.stopping import Interrupted

    freeze = ["train.freeze=[{match = '0.bias', from_epoch = 2}]", "train.epochs=4", "train.keep_checkpoints=9"]
    whole = tmp_path / "whole"
    fit(toy(tmp_path, *freeze), whole)
    epochs = checkpoint_weights(whole)
    assert len(epochs) == 4
    assert not torch.equal(epochs[0]["0.bias"], epochs[1]["0.bias"])  # epoch 2 trains it
    assert torch.equal(epochs[1]["0.bias"], epochs[3]["0.bias"])  # epochs 3 and 4 do not
    assert not torch.equal(epochs[1]["0.weight"], epochs[3]["0.weight"])

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        fit(toy(tmp_path, *freeze, "train.callbacks=[{name = 'interrupt_at', step = 30}]"), cut)
    fit(toy(tmp_path, *freeze), cut, resume=cut)
    resumed = checkpoint_weights(cut)[-1]
    for key, value in epochs[3].items():
        assert torch.equal(resumed[key], value), key


def test_until_epoch_trains_only_after_that_epoch(plugin_site, tmp_path: Path) -> None:
    from deepcourse.training.accelerator import make_accelerator
    from deepcourse.training.build import build_run

    start = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in toy_model(toy(tmp_path)).state_dict().items()}, str(start))
    recipe = toy(tmp_path, "train.freeze=[{match = '0', until_epoch = 1}]", f"model.init_from={start}",
                 "train.epochs=2", "train.keep_checkpoints=9")
    pieces = build_run(recipe, make_accelerator(recipe))
    assert sum(len(g["params"]) for g in pieces.optimizer.param_groups) == 4  # all: they train later
    fit(recipe, tmp_path / "run")
    first, second = checkpoint_weights(tmp_path / "run")
    initial = load_file(str(start))
    assert torch.equal(first["0.weight"], initial["0.weight"])  # epoch 1: the head alone trains
    assert not torch.equal(first["3.weight"], initial["3.weight"])
    assert not torch.equal(second["0.weight"], initial["0.weight"])  # epoch 2: both


# -- starting weights ---------------------------------------------------------------------------------------------
def test_init_from_loads_matching_tensors_and_reports_the_rest(plugin_site, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from deepcourse.training.transfer import load_initial

    recipe = toy(tmp_path)
    source = {k: torch.full_like(v, 0.25) for k, v in toy_model(recipe).state_dict().items()}
    source["3.weight"] = torch.zeros(5, 32)  # a head for 5 classes: another shape
    del source["3.bias"]
    source["extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": source}, tmp_path / "weights.pth")
    recipe = toy(tmp_path, f"model.init_from={tmp_path / 'weights.pth'}")
    model = toy_model(recipe)
    with caplog.at_level(logging.INFO, logger="deepcourse"):
        (loaded,) = load_initial(model, recipe)
    assert loaded.matched == ["0.weight", "0.bias"] and loaded.missing == ["3.bias"]
    assert loaded.reshaped == ["3.weight (5x32 -> 3x32)"] and loaded.unused == ["extra.weight"]
    assert torch.equal(model[0].bias, torch.full((32,), 0.25)) and not torch.equal(model[3].weight,
                                                                                    torch.zeros(3, 32))
    assert "model.init_from: loaded 2 of the model's 4 tensors" in caplog.text
    assert "skipped 1 of another shape: 3.weight (5x32 -> 3x32)" in caplog.text


def test_init_from_a_run_takes_its_best_weights(plugin_site, tmp_path: Path) -> None:
    from deepcourse.training.transfer import load_initial, resolve

    first = tmp_path / "runs" / "toy" / "20250101-000000"
    fit(toy(tmp_path, "train.max_steps=3"), first)
    best = load_file(str(first / "best" / "model.safetensors"))
    for given in (first, first.parent):  # the run, or the recipe's runs folder (its newest run)
        assert resolve(str(given)) == first / "best" / "model.safetensors"
        model = toy_model(toy(tmp_path))
        load_initial(model, toy(tmp_path, f"model.init_from={given}"))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())


def test_init_from_that_matches_nothing_or_is_not_there_is_a_recipe_error(plugin_site, tmp_path: Path) -> None:
    from deepcourse.training.transfer import load_initial

    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "empty").mkdir()
    for source, said in ((tmp_path / "other.safetensors", "no tensor of .* matches the model by name and shape"),
                         (tmp_path / "nowhere", "nowhere does not exist"),
                         (tmp_path / "empty", "empty holds no weights")):
        recipe = toy(tmp_path, f"model.init_from='{source}'")
        with pytest.raises(RecipeError, match=f"model.init_from: .*{said}"):
            load_initial(toy_model(recipe), recipe)
