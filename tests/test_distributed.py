"""Two processes on CPU (gloo) through `accelerate launch`: the same CLI, metrics over every sample once."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from core_support import final_weights, launch, run_cli

pytestmark = pytest.mark.slow


def test_two_processes_train_and_evaluate_every_sample_once(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "ddp"
    out = launch(["run", str(toy_recipe), "--run-dir", str(run), "--set", "data.eval_batch_size=8",
                  "--set", "train.checkpoint_every=3"], cli_env)
    assert out.returncode == 0, out.stdout + out.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["num_processes"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "validation"]
    assert len(evals) == 3
    assert all(r["num_samples"] == 51 for r in evals)  # 51 = 4 batches of 8 per process, tail not duplicated
    steps = [r["step"] for r in rows if r.get("scope") == "epoch" and r["split"] == "train"]
    assert steps == [5, 10, 15]  # 152 training samples / (16 per batch x 2 processes) = 5 steps per epoch
    # only the main process wrote checkpoints: one set of files, one rng file per process
    latest = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert sorted(p.name for p in latest.glob("rng-*.safetensors")) == ["rng-0.safetensors", "rng-1.safetensors"]
    best = json.loads((run / "best" / "metrics.json").read_text())
    single = run_cli(["evaluate", str(run), "--json"], cli_env)
    assert single.returncode == 0, single.stderr
    metrics = json.loads(single.stdout)
    assert metrics["num_samples"] == 51
    assert metrics["accuracy"] == pytest.approx(best["accuracy"])
    assert metrics["loss"] == pytest.approx(best["loss"], rel=1e-5)


def test_resume_needs_the_same_process_count(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "ddp"
    out = launch(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.epochs=1"], cli_env)
    assert out.returncode == 0, out.stderr
    single = run_cli(["run", "--resume", str(run)], cli_env)
    assert single.returncode == 2
    assert "saved by 2 process(es)" in single.stderr


def test_two_process_interrupt_and_resume_is_exact(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    common = ["--set", "train.checkpoint_every=4"]
    whole = launch(["run", str(toy_recipe), "--run-dir", str(tmp_path / "whole"), *common], cli_env)
    assert whole.returncode == 0, whole.stderr
    cut = launch(["run", str(toy_recipe), "--run-dir", str(tmp_path / "cut"), *common,
                  "--set", "train.callbacks=[{name = 'interrupt_at', step = 7}]"], cli_env)
    assert cut.returncode != 0
    # Ctrl-C after step 7 of one process: both stop at the next agreement point, step 10 (train.stop_check_every)
    assert (tmp_path / "cut" / "checkpoints" / "step-000000010").is_dir()
    assert not (tmp_path / "cut" / "checkpoints" / "step-000000011").exists()
    resumed = launch(["run", "--resume", str(tmp_path / "cut"), "--set", "train.callbacks=[]"], cli_env)
    assert resumed.returncode == 0, resumed.stderr
    import torch

    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and the record says so: every process's loss sums were saved and restored, not the main process's for all
    assert logged_losses(tmp_path / "cut") == logged_losses(tmp_path / "whole")


def logged_losses(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r.get("scope"), r.get("epoch"), r.get("step"), round(r["loss"], 6)) for r in rows
            if r.get("split") == "train" and "loss" in r]


def test_a_nan_on_one_rank_is_skipped_by_every_rank(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    """train.skip_nonfinite decides together: a NaN loss on rank 1 alone makes both processes skip that step, so no
    process leaves the gradients' all-reduce (gloo aborts "collective mismatch" otherwise; NCCL hangs)."""
    run = tmp_path / "run"
    out = launch(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.skip_nonfinite=true",
                  "--set", "train.callbacks=[{name = 'nan_loss_at', step = 3, rank = 1}]"], cli_env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads(sorted((run / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text())
    assert state["skipped_steps"] == 1


def test_one_failing_process_stops_the_others(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    import time

    start = time.monotonic()
    out = launch(["run", str(toy_recipe), "--run-dir", str(tmp_path / "r"), "--set", "train.epochs=50",
                  "--set", "train.callbacks=[{name = 'fail_on_rank', rank = 1, step = 3}]"], cli_env)
    assert out.returncode != 0
    assert "rank 1 fails on purpose" in out.stderr
    assert time.monotonic() - start < 120  # nobody waits forever in a collective


def test_a_sigterm_to_one_rank_makes_every_rank_report_sigterm(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    """A preemption that reaches rank 1 alone: the agreed stop carries its signal, so rank 0 too says SIGTERM and
    exits 143 (before, it said SIGINT and exited 130: it had no signal of its own)."""
    run = tmp_path / "run"
    out = launch(["run", str(toy_recipe), "--run-dir", str(run), "--set",
                  "train.callbacks=[{name = 'interrupt_at', step = 7, rank = 1, signal_name = 'SIGTERM'}]"], cli_env)
    assert out.returncode != 0
    said = [line for line in out.stderr.splitlines() if line.startswith("deepcourse: stopped by")]
    assert len(said) == 2, out.stderr[-3000:]
    assert all(line.startswith("deepcourse: stopped by SIGTERM; state saved in ") for line in said), said
    assert (run / "checkpoints" / "step-000000010").is_dir()
    codes = re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", out.stderr, re.M)  # the launcher's summary, rank by rank
    assert codes == ["143", "143"], out.stderr[-3000:]
