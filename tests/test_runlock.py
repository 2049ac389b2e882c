"""One writer per run directory: a second process exits 2 naming the holder, a killed holder blocks nobody."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from core_support import run_cli

from deepcourse.errors import CheckpointError
from deepcourse.rundir import lock as runlock

HOLD = "import sys, time; from pathlib import Path; from deepcourse.rundir import lock as runlock\n" \
       "lock = runlock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)\n"


def hold(folder: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Another process holding `folder`'s lock (as a training run does), once it has said so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture()
def interrupted(tmp_path: Path, toy_recipe: Path, cli_env) -> Path:
    """A toy run stopped by Ctrl-C after step 5 (its checkpoint saved): a run to resume."""
    run = tmp_path / "run"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set",
                   "train.callbacks=[{name = 'interrupt_at', step = 5}]"], cli_env)
    assert out.returncode == 130, out.stderr
    return run


def test_a_second_writer_exits_2_naming_the_holder_and_a_killed_holder_blocks_nobody(interrupted: Path,
                                                                                       cli_env) -> None:
    holder = hold(interrupted, cli_env)
    try:
        out = run_cli(["run", "--resume", str(interrupted)], cli_env)
        assert out.returncode == 2, out.stderr
        assert f"another deepcourse process is training in this run directory (pid {holder.pid} on host " \
               f"{socket.gethostname()}, since " in out.stderr and "Traceback" not in out.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    stale = json.loads((interrupted / runlock.LOCK_FILE).read_text())
    assert stale["pid"] == holder.pid  # the killed holder's file is still there ...
    out = run_cli(["run", "--resume", str(interrupted), "--set", "train.callbacks=[]"], cli_env)
    assert out.returncode == 0, out.stderr  # ... and blocks nothing
    assert "resuming" in out.stdout and not (interrupted / runlock.LOCK_FILE).exists()


def test_fit_itself_takes_the_lock(interrupted: Path, cli_env) -> None:
    """Not only the command line's early check: training (here the Python API) refuses a run someone holds."""
    import deepcourse.training.loop
    from deepcourse.recipe.load import load_recipe

    holder = hold(interrupted, cli_env)
    try:
        with pytest.raises(CheckpointError, match=f"pid {holder.pid} on host"):
            recipe = load_recipe(interrupted / "recipe.toml", ["train.callbacks=[]"])
            deepcourse.training.loop.fit(recipe, resume=interrupted)
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((interrupted / runlock.LOCK_FILE).read_text())["pid"] == holder.pid  # not taken over


def test_lock_is_released_and_its_file_removed(tmp_path: Path) -> None:
    with runlock.acquire(tmp_path) as lock:
        assert runlock.holder(tmp_path) == f"pid {os.getpid()} on host {socket.gethostname()}, since " \
            f"{json.loads(lock.path.read_text())['since']}"
        with pytest.raises(CheckpointError, match="another deepcourse process is training"):
            runlock.acquire(tmp_path)  # a second open file in this process conflicts too
    assert runlock.holder(tmp_path) is None and not (tmp_path / runlock.LOCK_FILE).exists()


@pytest.mark.slow
def test_two_resumes_at_once_leave_one_consistent_run(interrupted: Path, cli_env) -> None:
    """The issue's case: two `run --resume RUN` at once. The second exits 2 naming the first, which finishes a run
    whose metrics.jsonl and summary.json agree."""
    first = subprocess.Popen([sys.executable, "-m", "deepcourse", "run", "--resume", str(interrupted), "--set",
                              "train.callbacks=[{name = 'pause_at', step = 7, seconds = 4}]", "--no-report"],
                             env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in first.stdout:
        if line.strip() == "paused":
            break
    second = run_cli(["run", "--resume", str(interrupted), "--set", "train.callbacks=[]"], cli_env)
    assert second.returncode == 2 and f"(pid {first.pid} on host" in second.stderr, second.stderr
    rest, errors = first.communicate(timeout=120)
    assert first.returncode == 0, errors
    summary = json.loads((interrupted / "summary.json").read_text())
    rows = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs"] == 3 and [r["epoch"] for r in rows if r["split"] == "validation"] == [1, 2, 3]
