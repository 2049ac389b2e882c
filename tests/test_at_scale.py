"""Correct past one process (issue 22): what a cluster does to a run, reproduced on one CPU machine."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from deepcourse.errors import UserError
from deepcourse.rundir import files
from deepcourse.training import cluster

REPO = Path(__file__).resolve().parents[1]


class FakeCuda:
    """torch.cuda as a node with `count` GPUs shows it to a process on GPU `device`: one generator state per GPU."""

    def __init__(self, count: int, device: int) -> None:
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(count)}
        self.device = device

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "current_device", lambda: self.device)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device=None: self.states[self._index(device)].clone())
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states.values()])
        monkeypatch.setattr(cuda, "set_rng_state", self._set)
        monkeypatch.setattr(cuda, "set_rng_state_all", lambda states: [self._set(s, i) for i, s in enumerate(states)])

    def _index(self, device: Any) -> int:
        index = self.device if device is None else int(getattr(device, "index", device))
        if index not in self.states:
            raise IndexError(f"no GPU {index} on this node")
        return index

    def _set(self, state: torch.Tensor, device: Any = None) -> None:
        self.states[self._index(device)] = state.clone()


def test_a_process_saves_and_restores_only_its_own_gpus_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved on GPU 10 of a 12-GPU node, resumed as GPU 1 of a 2-GPU node: no IndexError, and the state that
    comes back is the process's own (not GPU 0's, not a list sorted as strings)."""
    big = FakeCuda(12, device=10)
    big.install(monkeypatch)
    tensors, meta = files.rng_state()
    assert [k for k in tensors if k.startswith("cuda")] == ["cuda"]
    assert torch.equal(tensors["cuda"], big.states[10])

    small = FakeCuda(2, device=1)
    small.install(monkeypatch)
    files.set_rng_state(tensors, meta)
    assert torch.equal(small.states[1], big.states[10])
    assert torch.equal(small.states[0], torch.zeros(16, dtype=torch.uint8))  # GPU 0 left alone


def test_an_older_checkpoint_with_every_gpu_restores_this_process_s(monkeypatch: pytest.MonkeyPatch) -> None:
    old = FakeCuda(12, device=0)
    tensors = {"torch": torch.get_rng_state(), "numpy": files.rng_state()[0]["numpy"]}
    tensors |= {f"cuda{i}": s for i, s in old.states.items()}  # what checkpoints held before: every visible GPU
    meta = files.rng_state()[1]
    node = FakeCuda(2, device=1)
    node.install(monkeypatch)
    files.set_rng_state(tensors, meta)
    assert torch.equal(node.states[1], old.states[1])


# -- starting on Slurm ---------------------------------------------------------------------------------------------
STAND_IN_SRUN = '''\
#!{python}
"""srun as a job step runs it: one task per node and task slot, each with its own SLURM_* variables."""
import os, subprocess, sys
nodes, per = int(os.environ["SLURM_NNODES"]), int(os.environ["SLURM_NTASKS_PER_NODE"])
command = sys.argv[1:]
if command[0] == "deepcourse":
    command = [{python!r}, "-m", "deepcourse", *command[1:]]
tasks = []
for rank in range(nodes * per):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per), SLURM_NODEID=str(rank // per),
               SLURM_NTASKS=str(nodes * per), SLURM_STEP_TASKS_PER_NODE=f"{{per}}(x{{nodes}})",
               SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"])
    tasks.append(subprocess.Popen(command, env=env))
sys.exit(max(t.wait() for t in tasks))
'''


def stand_ins(folder: Path) -> Path:
    """A bin folder with a stand-in srun and an scontrol that records what it is asked."""
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "srun").write_text(STAND_IN_SRUN.format(python=sys.executable))
    (folder / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {folder / 'scontrol.log'}\n")
    for tool in ("srun", "scontrol"):
        (folder / tool).chmod(0o755)
    return folder


@pytest.mark.slow
def test_the_documented_sbatch_script_trains_on_two_nodes(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    """docs/scripts/slurm_run.sbatch under a stand-in srun that starts one task per node (2 nodes, both this
    machine): every task takes its own rank from Slurm's variables, the two form one gloo group, the run ends."""
    import os
    import subprocess

    bin_dir = stand_ins(tmp_path / "bin")
    run = tmp_path / "run"
    env = {**cli_env, "PATH": f"{bin_dir}{os.pathsep}{cli_env['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "SLURM_JOB_ID": "4321", "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "2",
           "SLURM_NTASKS_PER_NODE": "1", "RECIPE": str(toy_recipe), "RUN": str(run)}
    done = subprocess.run(["bash", str(REPO / "docs" / "scripts" / "slurm_run.sbatch")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["num_processes"] == 2, info
    assert (run / "summary.json").exists() and not (bin_dir / "scontrol.log").exists()  # finished: no requeue


def test_the_scaling_page_shows_the_script_that_is_tested() -> None:
    script = (REPO / "docs" / "scripts" / "slurm_run.sbatch").read_text()
    page = (REPO / "docs" / "scaling.md").read_text()
    assert f"```bash\n{script}```" in page


@pytest.mark.parametrize("nodelist, first", [("gpu[07-09,12],cpu1", "gpu07"), ("node3", "node3"),
                                             ("a-b[001-004]", "a-b001"), ("x1,x2", "x1")])
def test_the_first_host_of_a_node_list(nodelist: str, first: str) -> None:
    assert cluster.first_host(nodelist) == first


def test_every_task_reads_its_own_variables() -> None:
    task = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
            "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}
    env = dict(task)
    assert cluster.adopt_slurm(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                                        "MASTER_ADDR": "gpu07", "MASTER_PORT": str(cluster.PORT_BASE + 3456)}
    assert env["RANK"] == "5" and env["MASTER_ADDR"] == "gpu07"


@pytest.mark.parametrize("env, words", [
    ({}, "not a task of a Slurm job step"),
    ({"SLURM_PROCID": "0"}, "lacks SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_ID"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1",
      "RANK": "0"}, "RANK is already set (0) by another launcher"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1",
      "SLURM_STEP_TASKS_PER_NODE": "4", "CUDA_VISIBLE_DEVICES": "2"}, "not --gpus-per-task"),
])
def test_what_slurm_cannot_start_is_refused(env: dict[str, str], words: str) -> None:
    with pytest.raises(UserError, match=re.escape(words)):
        cluster.adopt_slurm(env)


def test_run_slurm_outside_slurm_exits_2(cli_env) -> None:
    from core_support import run_cli

    env = {k: v for k, v in cli_env.items() if not k.startswith("SLURM_")}
    out = run_cli(["run", "--slurm", "toy"], env)
    assert out.returncode == 2 and "not a task of a Slurm job step" in out.stderr


# -- the run lock on filesystems without flock ---------------------------------------------------------------------
@pytest.fixture()
def no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """flock as Lustre without -o flock answers it: ENOLCK (not 'someone holds it')."""
    import errno

    from deepcourse.rundir import lock

    def refuse(fd: int) -> bool:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock, "_try_lock", refuse)


def test_without_flock_a_lock_file_holds_the_run(tmp_path: Path, no_flock: None) -> None:
    import os

    from deepcourse.errors import CheckpointError, RecipeWarning
    from deepcourse.rundir import lock

    with pytest.warns(RecipeWarning, match="cannot flock"):
        held = lock.acquire(tmp_path)
    info = json.loads((tmp_path / lock.FALLBACK_FILE).read_text())
    assert info["pid"] == os.getpid()
    assert lock.holder(tmp_path).startswith(f"pid {os.getpid()} on host")
    with pytest.warns(RecipeWarning), pytest.raises(CheckpointError, match="another deepcourse process is training"):
        lock.acquire(tmp_path)
    held.release()
    assert not (tmp_path / lock.FALLBACK_FILE).exists() and lock.holder(tmp_path) is None
    with pytest.warns(RecipeWarning):
        lock.acquire(tmp_path).release()


def test_a_lock_file_left_by_a_dead_process_here_is_taken_over_one_from_another_host_is_not(
        tmp_path: Path, no_flock: None) -> None:
    import socket
    import subprocess
    import sys

    from deepcourse.errors import CheckpointError, RecipeWarning
    from deepcourse.rundir import lock

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(gone.stdout), "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}
    (tmp_path / lock.FALLBACK_FILE).write_text(json.dumps(stale))
    assert lock.holder(tmp_path) is None
    with pytest.warns(RecipeWarning):
        lock.acquire(tmp_path).release()
    elsewhere = {"pid": 1, "host": "another-node", "since": "2026-01-01T00:00:00"}
    (tmp_path / lock.FALLBACK_FILE).write_text(json.dumps(elsewhere))
    with pytest.warns(RecipeWarning), pytest.raises(CheckpointError, match=r"remove .*\.lockfile and try again"):
        lock.acquire(tmp_path)


def test_a_run_trains_on_a_filesystem_without_flock(tmp_path: Path, toy_recipe: Path, plugin_site: Path,
                                                    no_flock: None) -> None:
    from click.testing import CliRunner

    from deepcourse.cli.main import main

    run = tmp_path / "run"
    out = CliRunner().invoke(main, ["run", str(toy_recipe), "--run-dir", str(run), "--no-report",
                                    "--set", "train.epochs=1"])
    assert out.exit_code == 0, out.output
    assert "this filesystem cannot flock" in out.stderr
    assert (run / "summary.json").exists() and not (run / ".lockfile").exists()


# -- data on the device: no host work per step ---------------------------------------------------------------------
def test_on_device_batches_are_cut_there_with_no_list_per_step(tmp_path: Path, toy_recipe: Path, plugin_site: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With data.on_device each batch's indices arrive as a tensor already on the data's device (the epoch's order
    went there once), never as a Python list made into a tensor and copied per step (a host-device sync each step
    on a GPU); and the batches are the same ones, so the run is the same."""
    from click.testing import CliRunner
    from core_support import final_weights

    from deepcourse.cli.main import main
    from deepcourse.data import ArrayDataset
    from deepcourse.training.sampling import DeviceBatchSampler

    seen: list[Any] = []
    orders: list[int] = []
    original_items, original_iter = ArrayDataset.__getitems__, DeviceBatchSampler.__iter__

    def recording_items(self: ArrayDataset, indices: Any) -> Any:
        seen.append((len(self), indices))
        return original_items(self, indices)

    def recording_iter(self: DeviceBatchSampler) -> Any:
        orders.append(1)
        return original_iter(self)

    monkeypatch.setattr(ArrayDataset, "__getitems__", recording_items)
    monkeypatch.setattr(DeviceBatchSampler, "__iter__", recording_iter)
    runs = {}
    for on_device in (False, True):
        seen.clear()
        run = tmp_path / f"on_device_{on_device}"
        out = CliRunner().invoke(main, ["run", str(toy_recipe), "--run-dir", str(run), "--no-report",
                                        "--set", f"data.on_device={str(on_device).lower()}"])
        assert out.exit_code == 0, out.output
        runs[on_device] = final_weights(run)
        largest = max(n for n, _ in seen)
        training = [i for n, i in seen if n == largest]  # batches of the training split, the largest
        assert len(training) == 3 * 10  # 3 epochs of 10 batches
        assert all(isinstance(i, torch.Tensor) for i in training) == on_device, {type(i) for i in training}
    assert len(orders) == 3  # one copy of the order per epoch, not one per step
    for key in runs[False]:
        assert torch.equal(runs[False][key], runs[True][key]), key


@pytest.mark.parametrize("on_device", [False, True])
def test_drop_last_trains_on_whole_batches_only(tmp_path: Path, toy_recipe: Path, plugin_site: Path,
                                                monkeypatch: pytest.MonkeyPatch, on_device: bool) -> None:
    """data.drop_last: every training step has the batch's full shape (a compiled model compiles once); the short
    batch is what is left out, a different one each epoch."""
    from click.testing import CliRunner

    from deepcourse.cli.main import main
    from deepcourse.data import ArrayDataset

    sizes: list[tuple[int, int]] = []
    original = ArrayDataset.__getitems__
    monkeypatch.setattr(ArrayDataset, "__getitems__",
                        lambda self, indices: sizes.append((len(self), len(indices))) or original(self, indices))
    run = tmp_path / "run"
    out = CliRunner().invoke(main, ["run", str(toy_recipe), "--run-dir", str(run), "--no-report", "--set",
                                    "data.drop_last=true", "--set", f"data.on_device={str(on_device).lower()}"])
    assert out.exit_code == 0, out.output
    largest = max(n for n, _ in sizes)
    training = [b for n, b in sizes if n == largest]
    assert training and set(training) == {16}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 * (largest // 16) == len(training)


# -- costs that scale down: checkpoints -----------------------------------------------------------------------------
@pytest.mark.parametrize("settings, steps", [
    (["train.checkpoint_epochs=2"], [20, 30]),  # every other epoch, and the end
    (["train.checkpoint_epochs=0"], [30]),  # none but the last
    (["train.checkpoint_epochs=0", "train.checkpoint_minutes=1e-7"], list(range(1, 31))),  # time is always up
    ([], [10, 20, 30]),  # as before: every epoch
])
def test_checkpoints_every_n_epochs_or_minutes(tmp_path: Path, toy_recipe: Path, plugin_site: Path,
                                               settings: list[str], steps: list[int]) -> None:
    from click.testing import CliRunner

    from deepcourse.cli.main import main

    run = tmp_path / "run"
    args = ["run", str(toy_recipe), "--run-dir", str(run), "--no-report", "--set", "train.keep_checkpoints=100"]
    out = CliRunner().invoke(main, args + [x for s in settings for x in ("--set", s)])
    assert out.exit_code == 0, out.output
    saved = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert saved == steps
