"""Runs survive SIGKILL at any point, checkpoints are atomic, and loading never executes planted code."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from core_support import FIXTURES, run_cli
from safetensors.torch import load_file

TIMING_KEYS = {"samples_per_s", "seconds"}


def crash_run(args: list[str], env: dict[str, str], crash_at: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FIXTURES / "crash_runner.py"), *args],
                          env={**env, "CRASH_AT": crash_at}, capture_output=True, text=True, timeout=300)


def final_state(run: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return load_file(str(last / "model.safetensors")), [
        {k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cli_env) -> tuple[Path, tuple]:
    from core_support import TOY_RECIPE

    folder = tmp_path_factory.mktemp("whole")
    recipe = folder / "toy.toml"
    recipe.write_text(TOY_RECIPE)
    run = folder / "run"
    out = run_cli(["run", str(recipe), "--run-dir", str(run), "--set", "train.checkpoint_every=3"], cli_env)
    assert out.returncode == 0, out.stderr
    return recipe, final_state(run)


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["step:14", "eval:5", "checkpoint-write:4", "checkpoint-commit:2"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path, uninterrupted, cli_env,
                                                          crash_at: str) -> None:
    recipe, (weights, rows) = uninterrupted
    run = tmp_path / "run"
    killed = crash_run(["run", str(recipe), "--run-dir", str(run), "--set", "train.checkpoint_every=3"],
                       cli_env, crash_at)
    assert killed.returncode == -9, killed.stderr
    # a checkpoint cut mid-write is never taken for a complete one
    from deepcourse.training.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run / "checkpoints")
    assert latest is not None and (latest / "trainer_state.json").exists()
    resumed = run_cli(["run", "--resume", str(run)], cli_env)
    assert resumed.returncode == 0, resumed.stderr
    got_weights, got_rows = final_state(run)
    assert got_rows == rows
    for key in weights:
        assert torch.equal(weights[key], got_weights[key]), key


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["optimizer.pt", "scheduler.pt"])
def test_planted_pickle_is_refused_and_never_runs(tmp_path: Path, toy_recipe: Path, cli_env, victim: str) -> None:
    run = tmp_path / "run"
    assert run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.checkpoint_every=4"],
                   cli_env).returncode == 0
    latest = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert not list(latest.glob("*.pt"))  # this version writes no pickle at all: state is JSON + safetensors
    stem = victim.removesuffix(".pt")
    for written in (f"{stem}.json", f"{stem}.safetensors"):  # as a run of an older version left it: a .pt file
        (latest / written).unlink()
    marker = tmp_path / "pwned"
    with open(latest / victim, "wb") as f:
        pickle.dump({"state": Payload(marker)}, f)
    out = run_cli(["run", "--resume", str(run)], cli_env)
    assert out.returncode == 2
    assert f"{victim}: refused to load" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path: Path, toy_recipe: Path,
                                                                        cli_env) -> None:
    """A checkpoint cut short (here its optimizer.safetensors) is skipped with a warning; the resume continues from the
    one before it and ends with exactly the weights the run had."""
    run = tmp_path / "run"
    assert run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.checkpoint_every=4"],
                   cli_env).returncode == 0
    older, latest = sorted((run / "checkpoints").glob("step-*"))
    expected = load_file(str(latest / "model.safetensors"))
    cut = (latest / "optimizer.safetensors").read_bytes()
    (latest / "optimizer.safetensors").write_bytes(cut[:len(cut) // 2])
    out = run_cli(["run", "--resume", str(run)], cli_env)
    assert out.returncode == 0, out.stderr
    assert (f"warning: checkpoint {latest.name} is damaged ({latest / 'optimizer.safetensors'}: cannot read tensors: "
            in out.stderr), out.stderr
    assert f"resuming from {older.name} instead" in out.stderr and "could run code" not in out.stderr
    assert (run / "checkpoints" / f"damaged-{latest.name}").is_dir()
    resumed = load_file(str(run / "checkpoints" / latest.name / "model.safetensors"))
    assert resumed.keys() == expected.keys() and all(torch.equal(resumed[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_a_run_whose_only_checkpoint_is_damaged_says_so(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "run"
    assert run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.keep_checkpoints=1"],
                   cli_env).returncode == 0
    (only,) = (run / "checkpoints").glob("step-*")
    (only / "optimizer.safetensors").write_bytes(b"")
    out = run_cli(["run", "--resume", str(run)], cli_env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (f"no checkpoint reads back whole; start a new run:\n  - {only.name}: {only / 'optimizer.safetensors'}: "
            f"cannot read tensors: Error while deserializing header: header too small" in out.stderr), out.stderr
    assert "could run code" not in out.stderr


@pytest.mark.slow
def test_corrupt_weights_are_reported_not_crashed_on(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "run"
    assert run_cli(["run", str(toy_recipe), "--run-dir", str(run)], cli_env).returncode == 0
    (run / "best" / "model.safetensors").write_bytes(b"not a safetensors file")
    out = run_cli(["evaluate", str(run)], cli_env)
    assert out.returncode == 2
    assert "model.safetensors: cannot load weights" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_skip_nonfinite_steps(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    """With skip_nonfinite a NaN loss does not stop training; the skipped steps are counted."""
    run = tmp_path / "run"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.skip_nonfinite=true",
                   "--set", "train.callbacks=[{name = 'poison_at', step = 28}]"], cli_env)
    assert out.returncode == 0, out.stderr
    state = json.loads(sorted((run / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text())
    assert state["skipped_steps"] >= 1
