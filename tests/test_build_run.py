"""One build of a run's pieces (`build_run`) for training, the range test, inference and the report; one resume read;
the explicit state of the training metrics, the checkpoint and the training step's result."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from core_support import TOY_RECIPE

from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.schema import Recipe

FACTS = {"in_features": 8, "num_classes": 3}


@pytest.fixture()
def recipe(plugin_site: Path, tmp_path: Path) -> Recipe:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return load_recipe(path, ["train.max_steps=25"])


def refuse(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{cls.__name__}.{name} was called")

    monkeypatch.setattr(cls, name, refused)


def toy_task_class() -> type:
    from deepcourse.registry import TASKS

    return TASKS.get("toy-classification")


# -- build_run ------------------------------------------------------------------------------------------------------
def test_a_run_gets_every_piece_prepared(recipe: Recipe) -> None:
    from deepcourse.training.accelerator import make_accelerator
    from deepcourse.training.build import build_run

    run = build_run(recipe, make_accelerator(recipe, trackers=False, warn=False))
    assert run.task is not None and run.bundle is not None and set(run.bundle.splits) == {"train", "validation"}
    assert run.steps_per_epoch == 10 and run.total_steps == 25  # 152 training samples in 16s; train.max_steps
    assert run.scheduler is not None and run.train_loader is not None and run.eval_loader is not None
    assert run.holdout_loader is None and run.facts == FACTS and run.artifacts == {"classes": 3}
    assert run.optimizer.param_groups[0]["params"][0] is next(run.model.parameters())  # the optimizer steps it


def test_inference_builds_the_task_and_model_and_reads_no_data(recipe: Recipe,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from deepcourse.training.build import build_run

    refuse(monkeypatch, toy_task_class(), "setup_data")
    run = build_run(recipe, facts=FACTS)
    assert type(run.task).__name__ == "ToyClassification" and isinstance(run.model, torch.nn.Module)
    assert run.model[0].in_features == 8 and run.model[-1].out_features == 3
    assert (run.bundle, run.optimizer, run.scheduler, run.train_loader, run.callbacks) == (None, None, None, None, [])


def test_the_schedule_replay_builds_no_task(recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepcourse.training.build import build_run

    refuse(monkeypatch, toy_task_class(), "__init__")
    refuse(monkeypatch, toy_task_class(), "setup_data")
    run = build_run(recipe, steps_per_epoch=10)
    assert run.task is None and run.bundle is None and run.model.weight.shape == (1, 1)  # a stand-in parameter
    assert (run.steps_per_epoch, run.total_steps) == (10, 25)
    assert isinstance(run.scheduler, torch.optim.lr_scheduler.OneCycleLR) and run.scheduler.total_steps == 25


def test_the_range_test_gets_random_batches_and_no_schedule(recipe: Recipe) -> None:
    from deepcourse.errors import RecipeError
    from deepcourse.training.accelerator import make_accelerator
    from deepcourse.training.build import build_run
    from deepcourse.training.sampling import EpochSampler, LengthGroupedSampler

    grouped = recipe.model_copy(update={"data": recipe.data.model_copy(update={"group_by_length": True})})
    accelerator = make_accelerator(grouped, trackers=False, warn=False)
    with pytest.raises(RecipeError, match="data.group_by_length"):  # a run groups, and the toy data has no lengths
        build_run(grouped, accelerator)
    run = build_run(grouped, accelerator, lr_test=True)
    assert type(run.sampler) is EpochSampler and not isinstance(run.sampler, LengthGroupedSampler)
    assert run.train_loader is not None and run.optimizer is not None
    assert (run.scheduler, run.eval_loader, run.holdout_loader, run.callbacks) == (None, None, None, [])


# -- the report at the end of a run ---------------------------------------------------------------------------------
def test_the_report_of_a_run_reuses_its_task_and_model(plugin_site, tmp_path: Path, monkeypatch) -> None:
    """`deepcourse.run` builds the task and the model once; the report gets them (with best/'s weights) instead of
    reading the recipe and building them again, and writes what `deepcourse report RUN_DIR` writes from files: the
    same numbers, also where the model computes in bf16 (Accelerate's casting comes with it)."""
    import deepcourse
    import deepcourse.results.report as report
    from deepcourse.api import evaluate_split

    task_cls = toy_task_class()
    built = {"task": 0, "model": 0}
    init, build_model = task_cls.__init__, task_cls.build_model

    def counted_init(self: Any, *args: Any, **kwargs: Any) -> None:
        built["task"] += 1
        init(self, *args, **kwargs)

    def counted_build(self: Any, *args: Any, **kwargs: Any) -> Any:
        built["model"] += 1
        return build_model(self, *args, **kwargs)

    seen: dict[str, torch.Tensor] = {}

    def task_report(self: Any, model: Any, recipe: Any, artifacts: Any, out: Path) -> Any:
        seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        metrics = evaluate_split(self, model, recipe, artifacts).metrics
        return [], [f"task figures here: loss {metrics['loss']!r} accuracy {metrics['accuracy']!r}", ""]

    monkeypatch.setattr(task_cls, "__init__", counted_init)
    monkeypatch.setattr(task_cls, "build_model", counted_build)
    monkeypatch.setattr(task_cls, "report", task_report)
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    result = deepcourse.run(str(path), "train.epochs=2", "train.mixed_precision='bf16'", run_dir=tmp_path / "run")
    assert built == {"task": 1, "model": 1}
    from safetensors.torch import load_file

    best = load_file(str(result.run_dir / "best" / "model.safetensors"))
    assert seen.keys() == best.keys() and all(torch.equal(seen[k], best[k]) for k in best)  # best/'s weights
    at_the_end = result.report.read_text()
    assert "task figures here" in at_the_end
    monkeypatch.setattr(task_cls, "__init__", init)
    assert report.write_report(result.run_dir).read_text() == at_the_end  # from the files alone: the same report


# -- one resume read ------------------------------------------------------------------------------------------------
def test_a_resume_validates_the_recipe_and_lists_the_checkpoints_once(plugin_site, tmp_path: Path,
                                                                     monkeypatch) -> None:
    from click.testing import CliRunner

    import deepcourse.recipe.load as loading
    import deepcourse.training.checkpoint as checkpoint
    from deepcourse.cli.main import main

    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    run = tmp_path / "run"
    out = CliRunner().invoke(main, ["run", str(path), "--run-dir", str(run), "--no-report", "--set", "train.epochs=1"])
    assert out.exit_code == 0, out.output
    calls = {"validate": 0, "list": 0}
    validate, listing = loading.validate_recipe, checkpoint.complete_checkpoints

    def counted_validate(*args: Any, **kwargs: Any) -> Any:
        calls["validate"] += 1
        return validate(*args, **kwargs)

    def counted_listing(*args: Any, **kwargs: Any) -> Any:
        calls["list"] += 1
        return listing(*args, **kwargs)

    monkeypatch.setattr(loading, "validate_recipe", counted_validate)
    for module in list(sys.modules.values()):  # wherever the listing was imported by name
        if getattr(module, "complete_checkpoints", None) is listing:
            monkeypatch.setattr(module, "complete_checkpoints", counted_listing)
    out = CliRunner().invoke(main, ["run", "--resume", str(run), "--no-report"])  # finished: nothing left to train
    assert out.exit_code == 0, out.output
    assert "resuming" in out.stdout
    assert calls == {"validate": 1, "list": 1}


def test_the_resume_read_holds_what_a_resume_needs(plugin_site, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deepcourse.cli.main import main
    from deepcourse.training.resume import read_resume

    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    run = tmp_path / "run"
    out = CliRunner().invoke(main, ["run", str(path), "--run-dir", str(run), "--no-report", "--set", "train.epochs=2"])
    assert out.exit_code == 0, out.output
    read = read_resume(run, path, ["train.epochs=2", "train.log_every=5"])  # log_every computes nothing
    assert read.recipe.train.log_every == 5 and read.artifacts == {"classes": 3}
    assert read.checkpoints == ["step-000000020", "step-000000010"]  # newest first
    assert read.launched["num_processes"] == 1 and read.launched["mixed_precision"] == "no"


# -- explicit state -------------------------------------------------------------------------------------------------
def test_training_metrics_refuse_to_be_read_with_outputs_pending() -> None:
    from accelerate import Accelerator

    from deepcourse.metrics import Accuracy, MetricCollection
    from deepcourse.training.meter import TrainMetrics

    metrics = TrainMetrics(MetricCollection(Accuracy()))
    metrics.add({"preds": torch.tensor([1, 2]), "targets": torch.tensor([1, 0])})
    with pytest.raises(RuntimeError, match=r"outputs of 1 step\(s\) are not in the metrics yet; call fold"):
        metrics.values()
    with pytest.raises(RuntimeError, match="fold"):
        metrics.state_dict()
    metrics.fold(Accelerator(cpu=True))
    assert metrics.values() == {"accuracy": 0.5} and metrics.state_dict()["folded"] == 1


def test_a_checkpoint_saves_what_it_names_and_changes_nothing(tmp_path: Path) -> None:
    from accelerate import Accelerator

    from deepcourse.metrics import Accuracy, MetricCollection
    from deepcourse.training.callbacks import TrainState
    from deepcourse.training.checkpoint import save_checkpoint
    from deepcourse.training.meter import LossMeter, TrainMetrics

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state, loss, metrics = TrainState(global_step=7, elapsed_s=1.5), LossMeter(), TrainMetrics(
        MetricCollection(Accuracy()))
    loss.add(torch.tensor(2.0))
    before = asdict(state)
    folder = save_checkpoint(tmp_path / "checkpoints", accelerator, model=model, optimizer=optimizer,
                             scheduler=scheduler, state=state, loss=loss, train_metrics=metrics, keep=2)
    assert asdict(state) == before  # the loop brings the state up to date, not the save
    assert folder.name == "step-000000007"
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "optimizer.json", "scheduler.json", "rng-0.json", "rng-0.safetensors",
            "trainer_state.json"} <= names and not any(n.startswith("scaler") for n in names)  # no fp16 scaler
    saved = json.loads((folder / "trainer_state.json").read_text())
    assert saved["global_step"] == 7 and saved["elapsed_s"] == 1.5 and saved["loss_meter"]["log_sum"] == 2.0
    metrics.add({"preds": torch.tensor([1]), "targets": torch.tensor([1])})
    with pytest.raises(RuntimeError, match="fold"):  # unfolded outputs are not saved as if they were not there
        save_checkpoint(tmp_path / "checkpoints", accelerator, model=model, optimizer=optimizer,
                        scheduler=scheduler, state=state, loss=loss, train_metrics=metrics, keep=2)


def test_a_training_step_gives_a_loss_or_a_loss_and_outputs() -> None:
    from deepcourse.training.loop import split_step

    loss = torch.tensor(1.5)
    outputs = {"preds": torch.tensor([1])}
    assert split_step(loss) == (loss, None)
    assert split_step((loss, outputs)) == (loss, outputs)
    with pytest.raises(TypeError, match=r"training_step must return the loss .* it returned a tuple of 3"):
        split_step((loss, outputs, 1))
    with pytest.raises(TypeError, match="it returned float"):
        split_step(1.5)
