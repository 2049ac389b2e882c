"""Weight averaging (`train.average`): the three methods against their formulas, evaluation and best/ from the
average, a bit-exact resume after a stop, and the keys' bad values exiting 2 with the key named."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from core_support import TOY_RECIPE, launch, run_cli
from safetensors.torch import load_file
from torch import nn

from deepcourse.errors import RecipeError
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.techniques import WeightAveraging
from deepcourse.registry import MODELS
from deepcourse.training.averaging import WeightAverage, averaged_weights
from deepcourse.training.callbacks import TrainState
from deepcourse.training.loop import fit
from deepcourse.training.stopping import Interrupted


# -- the formulas, on a tiny module ---------------------------------------------------------------------------------
def tiny() -> nn.Module:
    """A linear layer and a batch norm: parameters, float buffers (running statistics) and an integer buffer."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def floats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def train_step(model: nn.Module, step: int) -> None:
    """Stands for an optimizer step (and a forward pass that moves batch norm's statistics): new values everywhere."""
    g = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        for tensor in floats_live(model):
            tensor.add_(torch.randn(tensor.shape, generator=g))
        model[1].num_batches_tracked += 1


def floats_live(model: nn.Module) -> list[torch.Tensor]:
    return [v for v in model.state_dict().values() if v.is_floating_point()]


def run_steps(model: nn.Module, average: WeightAverage, steps: int) -> list[dict[str, torch.Tensor]]:
    """The loop's calls: the start, then a step and its update; the weights after each step (before its update)."""
    ctx: Any = SimpleNamespace(state=TrainState())
    average.on_train_start(ctx)
    seen = [floats(model)]
    for step in range(1, steps + 1):
        train_step(model, step)
        seen.append(floats(model))
        ctx.state.global_step = step
        average.on_step_end(ctx, None)
    return seen


def averaged(average: WeightAverage) -> dict[str, torch.Tensor]:
    return dict(zip(average.names, average.averaged, strict=True))


def test_ema_is_the_hand_computed_average_and_leaves_the_model_alone() -> None:
    model = tiny()
    average = WeightAverage(WeightAveraging(method="ema", decay=0.9), model, total_steps=3)
    seen = run_steps(model, average, 3)
    d = 0.9
    for key in seen[0]:
        w0, w1, w2, w3 = (s[key] for s in seen)
        expected = ((w0 * d + (1 - d) * w1) * d + (1 - d) * w2) * d + (1 - d) * w3
        torch.testing.assert_close(averaged(average)[key], expected)
        assert torch.equal(model.state_dict()[key], w3), key  # ema trains on the model's own weights
    assert "1.num_batches_tracked" not in average.names and int(model[1].num_batches_tracked) == 3

    trained = floats(model)
    with averaged_weights(average):  # evaluation sees the average ...
        for key, value in averaged(average).items():
            assert torch.equal(model.state_dict()[key], value), key
    for key, value in trained.items():  # ... and training gets its weights back, exactly
        assert torch.equal(model.state_dict()[key], value), key
    average.on_train_end(SimpleNamespace(state=TrainState()))  # type: ignore[arg-type]
    for key, value in averaged(average).items():
        assert torch.equal(model.state_dict()[key], value), key


def test_ema_ramp_every_and_start() -> None:
    """every = 2: updates after steps 2 and 4; start = 0.25 of 4 steps: the average begins as the weights at step 2
    (the first update at or after step 1); ramp = 1: the share kept is decay * step / total."""
    model = tiny()
    average = WeightAverage(WeightAveraging(method="ema", decay=0.5, every=2, ramp=1.0, start=0.25), model,
                            total_steps=4)
    seen = run_steps(model, average, 4)
    keep = 0.5 * 4 / 4
    for key in seen[0]:
        torch.testing.assert_close(averaged(average)[key], keep * seen[2][key] + (1 - keep) * seen[4][key])
    assert average.count == 2


def test_lookahead_follows_airbench() -> None:
    """airbench94's Lookahead (benchmarks/cifar_airbench_loop.py): slow weights from the initial ones; every 5 steps
    slow.lerp_(fast, 1 - alpha[step]) and fast.copy_(slow), alpha = 0.95 ** 5 * (step / total) ** 3; at the end
    fast = slow."""
    total, every = 12, 5
    ours, theirs = tiny(), tiny()
    average = WeightAverage(WeightAveraging(method="lookahead", decay=0.95, every=every, ramp=3.0), ours, total)
    alpha = 0.95 ** every * (torch.arange(total + 1) / total) ** 3
    slow = {k: v.clone() for k, v in theirs.state_dict().items()}
    ctx: Any = SimpleNamespace(state=TrainState())
    average.on_train_start(ctx)
    for step in range(1, total + 1):
        train_step(ours, step)
        train_step(theirs, step)
        ctx.state.global_step = step
        average.on_step_end(ctx, None)
        if step % every == 0:
            with torch.no_grad():
                for ema, param in zip(slow.values(), theirs.state_dict().values(), strict=True):
                    if param.dtype.is_floating_point:
                        ema.lerp_(param, 1 - float(alpha[step]))
                        param.copy_(ema)
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value)
    average.on_train_end(ctx)
    with torch.no_grad():
        for ema, param in zip(slow.values(), theirs.state_dict().values(), strict=True):
            if param.dtype.is_floating_point:
                param.copy_(ema)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    assert not torch.equal(ours[0].weight, tiny()[0].weight)


def test_swa_is_the_mean_of_the_snapshots_from_start_on() -> None:
    model = tiny()
    average = WeightAverage(WeightAveraging(method="swa", start=0.5), model, total_steps=6)
    seen = run_steps(model, average, 6)
    for key in seen[0]:
        torch.testing.assert_close(averaged(average)[key], torch.stack([s[key] for s in seen[3:]]).mean(0))
    assert average.count == 4


def test_before_the_average_begins_evaluation_sees_the_weights() -> None:
    model = tiny()
    average = WeightAverage(WeightAveraging(method="swa", start=0.5), model, total_steps=6)
    run_steps(model, average, 2)
    trained = floats(model)
    with averaged_weights(average):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())


# -- a run ----------------------------------------------------------------------------------------------------------
AVERAGES = {"ema": "{method = 'ema', decay = 0.8, ramp = 1.0}",
            "lookahead": "{method = 'lookahead', decay = 0.95, every = 3, ramp = 3.0}",
            "swa": "{method = 'swa', start = 0.3, every = 2}"}


def toy(tmp_path: Path, *overrides: str):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return load_recipe(path, ["train.keep_checkpoints=10", *overrides])


def checkpoint_files(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    return {name: load_file(str(last / name)) for name in ("model.safetensors", "average.safetensors")}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("method", sorted(AVERAGES))
def test_a_resumed_run_continues_bit_exactly(plugin_site, tmp_path: Path, method: str) -> None:
    """Stopped by a Ctrl-C after step 13 (mid-epoch, between two updates) and resumed: the last checkpoint's weights
    and average, best/ and the model training ends with are those of a run never stopped."""
    whole = fit(toy(tmp_path, f"train.average={AVERAGES[method]}"), run_dir=tmp_path / "whole")
    with pytest.raises(Interrupted):
        fit(toy(tmp_path, f"train.average={AVERAGES[method]}", "train.callbacks=[{name = 'interrupt_at', step = 13}]"),
            run_dir=tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoints" / "step-000000013" / "average.safetensors").is_file()
    resumed = fit(toy(tmp_path, f"train.average={AVERAGES[method]}"), resume=tmp_path / "cut")
    for name, tensors in checkpoint_files(tmp_path / "whole").items():
        assert_same(tensors, checkpoint_files(tmp_path / "cut")[name])
    assert_same(load_file(str(tmp_path / "whole" / "best" / "model.safetensors")),
                load_file(str(tmp_path / "cut" / "best" / "model.safetensors")))
    assert_same(whole.trained.model.state_dict(), resumed.trained.model.state_dict())
    assert whole.summary["best"] == resumed.summary["best"]


def test_evaluation_and_best_use_the_average(plugin_site, tmp_path: Path) -> None:
    """best/ holds the average of the step it was chosen at (not the weights trained then), and the model ends the
    run holding the last average."""
    fitted = fit(toy(tmp_path, f"train.average={AVERAGES['ema']}"), run_dir=tmp_path / "run")
    run = tmp_path / "run"
    best = json.loads((run / "best" / "metrics.json").read_text())
    chosen = run / "checkpoints" / f"step-{best['step']:09d}"
    mean, trained = load_file(str(chosen / "average.safetensors")), load_file(str(chosen / "model.safetensors"))
    weights = load_file(str(run / "best" / "model.safetensors"))
    assert all(torch.equal(weights[k], mean[f"averaged.{k}"]) for k in weights)
    assert not all(torch.equal(weights[k], trained[k]) for k in weights)
    last = checkpoint_files(run)["average.safetensors"]
    ended = fitted.trained.model.state_dict()
    assert all(torch.equal(ended[k], last[f"averaged.{k}"]) for k in ended)


@pytest.mark.slow
def test_two_processes_average_alike_and_resume_exactly(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    """Lookahead writes the average back into the weights of every process: stopped after step 7 (both processes
    stop at step 10, train.stop_check_every) and resumed, the run ends as one never stopped; the other process got
    the average it resumed with from the main one."""
    common = ["--set", f"train.average={AVERAGES['lookahead']}", "--set", "train.keep_checkpoints=10"]
    whole = launch(["run", str(toy_recipe), "--run-dir", str(tmp_path / "whole"), *common], cli_env)
    assert whole.returncode == 0, whole.stderr
    cut = launch(["run", str(toy_recipe), "--run-dir", str(tmp_path / "cut"), *common,
                  "--set", "train.callbacks=[{name = 'interrupt_at', step = 7}]"], cli_env)
    assert cut.returncode != 0 and (tmp_path / "cut" / "checkpoints" / "step-000000010").is_dir()
    resumed = launch(["run", "--resume", str(tmp_path / "cut"), "--set", "train.callbacks=[]"], cli_env)
    assert resumed.returncode == 0, resumed.stderr
    for name, tensors in checkpoint_files(tmp_path / "whole").items():
        assert_same(tensors, checkpoint_files(tmp_path / "cut")[name])
    assert_same(load_file(str(tmp_path / "whole" / "best" / "model.safetensors")),
                load_file(str(tmp_path / "cut" / "best" / "model.safetensors")))


# -- bad input --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "key"), [
    ("{method = 'ema', decay = 1.0}", "train.average.decay"), ("{method = 'ema', decay = 0.0}", "train.average.decay"),
    ("{method = 'lookahead', ramp = -1.0}", "train.average.ramp"),
    ("{method = 'swa', start = 1.0}", "train.average.start"), ("{method = 'ema', every = 0}", "train.average.every"),
    ("{method = 'polyak'}", "train.average.method"), ("{decay = 0.9}", "train.average.method"),
    ("{method = 'ema', warmup = 3}", "train.average.warmup")])
def test_bad_keys_are_named(tmp_path: Path, value: str, key: str) -> None:
    with pytest.raises(RecipeError) as caught:
        toy(tmp_path, f"train.average={value}")
    assert caught.value.exit_code == 2 and any(p.startswith(f"{key}:") for p in caught.value.problems), \
        caught.value.problems


@pytest.fixture()
def frozen_model(plugin_site) -> Any:
    @MODELS.register("averaging_test_frozen")
    def frozen(in_features: int, num_classes: int) -> nn.Module:
        """A linear layer whose weights do not train."""
        layer = nn.Linear(in_features, num_classes)
        layer.requires_grad_(False)
        return layer

    yield
    MODELS.unregister("averaging_test_frozen")


def test_averaging_a_model_that_trains_no_weights_is_refused(frozen_model, tmp_path: Path) -> None:
    recipe = toy(tmp_path, "train.average={method = 'ema'}", "model={name = 'averaging_test_frozen'}")
    with pytest.raises(RecipeError, match=r"^train.average: model 'averaging_test_frozen' trains none of its "
                                          r"parameters"):
        fit(recipe, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # no half-made run directory


def test_the_command_line_exits_2_naming_the_key(toy_recipe: Path, cli_env, tmp_path: Path) -> None:
    out = run_cli(["run", str(toy_recipe), "--runs-root", str(tmp_path / "runs"), "--set",
                   "train.average={method = 'ema', decay = 1.5}"], cli_env)
    assert out.returncode == 2 and "train.average.decay: input should be less than 1" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()


def test_the_resolved_recipe_reads_back(tmp_path: Path) -> None:
    """A run's recipe.toml (every key written out) loads again, as resume and evaluate read it."""
    recipe = toy(tmp_path, f"train.average={AVERAGES['swa']}")
    again = tmp_path / "again.toml"
    again.write_text(recipe.to_toml())
    assert tomllib.loads(again.read_text())["train"]["average"]["method"] == "swa"
    assert load_recipe(again).train.average == recipe.train.average
