"""The shared training loop, end to end through the CLI with the toy plugin."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from core_support import final_weights, run_cli

TIMING_KEYS = {"samples_per_s", "seconds"}


def metrics_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_run_writes_a_complete_run_directory(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    out = run_cli(["run", str(toy_recipe), "--runs-root", str(tmp_path / "runs"), "--json"], cli_env)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    run = Path(summary["run_dir"])
    assert run.parent == tmp_path / "runs" / "toy"
    for name in ("recipe.toml", "run.json", "metrics.jsonl", "summary.json", "best/model.safetensors",
                 "best/facts.json", "best/artifacts.json", "best/recipe.toml"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 3 and info["num_parameters"] == summary["num_parameters"] > 0
    assert any(p["name"] == "toy" for p in info["plugins"])
    rows = metrics_rows(run)
    evals = [r for r in rows if r["split"] == "validation"]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    assert all({"event", "epoch", "step", "split"} <= set(r) for r in rows)
    assert len(list((run / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints default
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["accuracy"] == max(r["accuracy"] for r in evals)
    assert summary["best"]["accuracy"] == best["accuracy"]


@pytest.mark.slow
def test_exact_resume_after_ctrl_c(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    """Stopping mid-epoch (real SIGINT) and resuming gives the same weights and metrics as never stopping."""
    common = ["--set", "train.checkpoint_every=4"]
    whole = run_cli(["run", str(toy_recipe), "--run-dir", str(tmp_path / "whole"), *common], cli_env)
    assert whole.returncode == 0, whole.stderr
    cut = run_cli(["run", str(toy_recipe), "--run-dir", str(tmp_path / "cut"), *common,
                   "--set", "train.callbacks=[{name = 'interrupt_at', step = 13}]"], cli_env)
    assert cut.returncode == 130, cut.stderr
    assert "deepcourse run --resume" in cut.stderr
    assert (tmp_path / "cut" / "checkpoints" / "step-000000013").is_dir()
    first = json.loads((tmp_path / "cut" / "checkpoints" / "step-000000013" / "trainer_state.json").read_text())
    resumed = run_cli(["run", "--resume", str(tmp_path / "cut"), "--set", "train.callbacks=[]"], cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert metrics_rows(tmp_path / "whole") == metrics_rows(tmp_path / "cut")
    # the wall time counts the segment before the stop too, up to the checkpoint the resume continued from
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert 0 < first["elapsed_s"] < summary["wall_time_s"]


@pytest.mark.slow
def test_resume_refuses_a_different_recipe(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "r"
    assert run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.epochs=1"],
                   cli_env).returncode == 0
    out = run_cli(["run", str(toy_recipe), "--resume", str(run), "--set", "optimizer.lr=0.5"], cli_env)
    assert out.returncode == 2
    assert "optimizer.lr: run has 0.05, recipe has 0.5" in out.stderr
    assert "Traceback" not in out.stderr


def test_existing_run_dir_is_never_overwritten(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(target)], cli_env)
    assert out.returncode == 2 and "already exists and is not empty" in out.stderr
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_setup_error_leaves_no_run_directory(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    runs = tmp_path / "runs"
    out = run_cli(["run", str(toy_recipe), "--runs-root", str(runs), "--set", "eval.split=test"], cli_env)
    assert out.returncode == 2, out.stderr
    assert "toy_blobs has no split 'test'" in out.stderr and "Traceback" not in out.stderr
    assert not runs.exists() or not any(runs.rglob("*"))


def test_nonfinite_loss_stops_with_clear_message(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "nan"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.checkpoint_every=2",
                   "--set", "train.callbacks=[{name = 'poison_at', step = 5}]"], cli_env)
    assert out.returncode == 2, out.stderr
    assert "the training loss became nan by step 6" in out.stderr
    assert "step-000000004" in out.stderr  # the last good checkpoint is named and kept
    assert (run / "checkpoints" / "step-000000004" / "trainer_state.json").exists()


@pytest.mark.slow
def test_evaluate_and_predict_from_run_directory(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "r"
    assert run_cli(["run", str(toy_recipe), "--run-dir", str(run)], cli_env).returncode == 0
    out = run_cli(["evaluate", str(run), "--json"], cli_env)
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(best["accuracy"])
    assert metrics["loss"] == pytest.approx(best["loss"], rel=1e-5)
    assert metrics["num_samples"] == 51
    pred = run_cli(["predict", str(run), ",".join(["0.5"] * 8), "--json"], cli_env)
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)["class"] in (0, 1, 2)


def test_evaluate_rejects_what_is_not_a_run(tmp_path: Path, cli_env) -> None:
    out = run_cli(["evaluate", str(tmp_path)], cli_env)
    assert out.returncode == 2
    assert "not a deepcourse run directory" in out.stderr and "Traceback" not in out.stderr


def test_max_steps_smoke_run(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "smoke"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.max_steps=3"], cli_env)
    assert out.returncode == 0, out.stderr
    rows = metrics_rows(run)
    assert max(r["step"] for r in rows) == 3
    assert any(r["split"] == "validation" for r in rows)  # evaluated at the end even mid-epoch


def test_tensorboard_tracker_writes_events(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "tb"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.trackers=['tensorboard']",
                   "--set", "train.epochs=1"], cli_env)
    assert out.returncode == 0, out.stderr
    assert list((run / "trackers").rglob("events.out.tfevents.*"))  # Accelerate's TensorBoard tracker writes them


@pytest.mark.slow
def test_early_stopping_stops_when_the_monitor_stalls(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "es"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.epochs=6",
                   "--set", "optimizer.lr=1e-12", "--set", "scheduler.name=constant",
                   "--set", "train.early_stopping={patience = 2}"], cli_env)
    assert out.returncode == 0, out.stderr
    assert "early stopping after epoch 3" in out.stdout
    evals = [r for r in metrics_rows(run) if r["split"] == "validation"]
    assert len(evals) == 3


@pytest.mark.parametrize("options", [
    ["train.grad_accum=3", "train.clip_grad_norm=1.0", "train.l1=1e-4", "scheduler.name=cosine",
     "scheduler.warmup_steps=2"],
    ["train.mixed_precision='bf16'", "optimizer={name = 'adamw', lr = 0.01}", "scheduler.name=plateau",
     "train.monitor=loss", "train.monitor_mode=min"],
    ["optimizer.name=rmsprop", "optimizer.lr=0.001", "scheduler.name=multistep", "scheduler.milestones=[1, 2]",
     "train.deterministic=true"],
])
@pytest.mark.slow
def test_engine_options_train_to_a_useful_model(tmp_path: Path, toy_recipe: Path, cli_env, options) -> None:
    run = tmp_path / "r"
    args = ["run", str(toy_recipe), "--run-dir", str(run)]
    for option in options:
        args += ["--set", option]
    out = run_cli(args, cli_env)
    assert out.returncode == 0, out.stderr
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["accuracy"] > 0.6  # three well-separated blobs: chance is 0.33


@pytest.mark.slow
def test_grad_accum_counts_optimizer_steps(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "acc"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.grad_accum=4"], cli_env)
    assert out.returncode == 0, out.stderr
    epoch_rows = [r for r in metrics_rows(run) if r["split"] == "train" and r["scope"] == "epoch"]
    assert [r["step"] for r in epoch_rows] == [3, 6, 9]  # 10 batches per epoch -> ceil(10 / 4) = 3 steps


def test_train_and_eval_samples_subset_reproducibly(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "sub"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "data.train_samples=48",
                   "--set", "data.eval_samples=20", "--set", "train.epochs=1"], cli_env)
    assert out.returncode == 0, out.stderr
    rows = metrics_rows(run)
    assert [r["step"] for r in rows if r.get("scope") == "epoch" and r["split"] == "train"] == [3]  # 48 / 16
    assert [r["num_samples"] for r in rows if r["split"] == "validation"] == [20]


def test_a_batch_larger_than_the_training_set_is_said(tmp_path: Path, toy_recipe: Path, plugin_site) -> None:
    """It trains (one batch an epoch, as a smoke run on tiny data may want), but not as the recipe reads: said."""
    from click.testing import CliRunner

    from deepcourse.cli.main import main

    out = CliRunner().invoke(main, ["run", str(toy_recipe), "--run-dir", str(tmp_path / "r"), "--no-report", "--set",
                                    "data.train_samples=10", "--set", "train.epochs=1"])
    assert out.exit_code == 0, out.output
    assert ("warning: data.batch_size = 16 is more than the 10 training samples (data.train_samples): every epoch is "
            "one batch of 10") in out.stderr
