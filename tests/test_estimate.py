"""Short runs are not spent evaluating (eval.every = "end", train.max_steps), and a run's length is measured before it
starts (the probe changes nothing the run computes; `deepcourse check --estimate`)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from core_support import TOY_RECIPE, final_weights, run_cli

import deepcourse
from deepcourse.recipe.load import load_recipe
from deepcourse.training import estimate


def toy(tmp_path: Path) -> str:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return str(path)


def evaluations(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "validation"]


def test_eval_every_end_evaluates_after_the_last_epoch_only(plugin_site: Path, tmp_path: Path) -> None:
    result = deepcourse.run(toy(tmp_path), "eval.every='end'", run_dir=tmp_path / "run", report=False)
    assert [r["epoch"] for r in evaluations(result.run_dir)] == [3]
    assert result.best["epoch"] == 3


def test_a_run_cut_by_max_steps_evaluates_once_on_as_many_samples_as_it_trained_on(
        plugin_site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 152 training samples in batches of 16: 10 steps an epoch; 12 steps end in the second of three epochs
    with caplog.at_level("INFO"):
        result = deepcourse.run(toy(tmp_path), "train.max_steps=12", "data.batch_size=2", "train.epochs=100",
                                run_dir=tmp_path / "run", report=False)
    (only,) = evaluations(result.run_dir)
    assert only["num_samples"] == 24  # 12 steps of 2 samples, of the 51 validation samples
    assert "train.max_steps = 12: evaluating 24 of the 51 'validation' samples" in caplog.text
    # data.eval_samples says otherwise; `deepcourse evaluate` of the run evaluates as the run did
    again = deepcourse.run(toy(tmp_path), "train.max_steps=12", "data.batch_size=2", "data.eval_samples=40",
                           run_dir=tmp_path / "other", report=False)
    assert [r["num_samples"] for r in evaluations(again.run_dir)] == [40]
    assert deepcourse.evaluate(result.run_dir)["num_samples"] == 24


def test_a_run_cut_by_max_steps_keeps_an_eval_every_it_is_given(plugin_site: Path, tmp_path: Path) -> None:
    """A step budget (a recipe's max_steps, a benchmark's --set eval.every=1) still evaluates as asked."""
    # batches of 16: 10 steps an epoch; 25 steps end in the third of 100 epochs
    cut = ("train.max_steps=25", "data.batch_size=16", "train.epochs=100")
    asked = deepcourse.run(toy(tmp_path), *cut, "eval.every=1", run_dir=tmp_path / "asked", report=False)
    assert [r["epoch"] for r in evaluations(asked.run_dir)] == [1, 2, 3]
    default = deepcourse.run(toy(tmp_path), *cut, run_dir=tmp_path / "default", report=False)
    assert [r["epoch"] for r in evaluations(default.run_dir)] == [3]


def test_the_probe_changes_nothing_the_run_computes(plugin_site: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # dropout draws from the global generator and momentum SGD keeps state: both must be as without the probe
    with caplog.at_level("INFO"):
        probed = deepcourse.run(toy(tmp_path), "train.estimate=true", run_dir=tmp_path / "probed", report=False)
    plain = deepcourse.run(toy(tmp_path), "train.estimate=false", run_dir=tmp_path / "plain", report=False)
    assert "deepcourse: estimate: about" in caplog.text
    assert "estimate" in json.loads((probed.run_dir / "run.json").read_text())
    assert "estimate" not in json.loads((plain.run_dir / "run.json").read_text())
    a, b = final_weights(probed.run_dir), final_weights(plain.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert probed.history[-1]["loss"] == plain.history[-1]["loss"]


def test_the_estimate_is_within_a_factor_2_of_the_run(plugin_site: Path, tmp_path: Path) -> None:
    # steps heavy enough (a wide MLP) that the steps, not the run's fixed costs, make its time
    overrides = ["data.n=2400", "data.dim=256", "model.hidden=1024", "model.dropout=0.0", "data.batch_size=128",
                 "train.epochs=4", "train.threads=1", "train.checkpoint_epochs=0", "train.log_every=1000"]
    measured, lines = estimate.estimate_recipe(load_recipe(toy(tmp_path), overrides))
    assert measured.steps == 60 and measured.evaluations == 4 and lines[-1].startswith("deepcourse: estimate: about")
    start = time.perf_counter()
    deepcourse.run(toy(tmp_path), *overrides, "train.estimate=false", run_dir=tmp_path / "run", report=False)
    took = time.perf_counter() - start
    assert took / 2 <= measured.seconds <= took * 2, (measured, took)


def test_a_long_cpu_estimate_names_the_tasks_faster_recipe(plugin_site: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from deepcourse.registry import TASKS

    recipe = load_recipe(toy(tmp_path), ["train.device='cpu'", "train.epochs=1"])
    _, lines = estimate.estimate_recipe(recipe)
    assert not any("deepcourse run" in line for line in lines)
    monkeypatch.setattr(estimate, "HINT_AFTER_S", 0.0)
    monkeypatch.setattr(TASKS.get("toy-classification"), "faster_recipes", {"toy_blobs": "quickstart"})
    _, lines = estimate.estimate_recipe(recipe)
    assert "`deepcourse run quickstart` is a shipped recipe for toy_blobs" in lines[-1]
    monkeypatch.setattr(TASKS.get("toy-classification"), "faster_recipes", {"toy_blobs": "no_such_recipe"})
    assert not any("deepcourse run" in line for line in estimate.estimate_recipe(recipe)[1])


def test_check_estimate_prints_without_a_run_and_refuses_a_broken_recipe(tmp_path: Path, cli_env) -> None:
    recipe = toy(tmp_path)
    out = run_cli(["check", "--estimate", recipe, "--set", "train.epochs=1"], cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "estimate: about" in out.stdout and "precision float32" in out.stdout
    assert not (tmp_path / "runs").exists()
    out = run_cli(["check", "--estimate", recipe, "--set", "model.hidden=0"], cli_env, cwd=tmp_path)
    assert out.returncode == 2 and "model.hidden" in out.stderr and "Traceback" not in out.stderr
    out = run_cli(["check", "--estimate", recipe, "--set", "eval.every='never'"], cli_env, cwd=tmp_path)
    assert out.returncode == 2 and "eval.every" in out.stderr
