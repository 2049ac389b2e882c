"""Helpers shared by the core tests (imported by name: every test folder has its own conftest)."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def make_distribution(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str],
                      version: str = "0.1.0", requires: list[str] = ()) -> None:
    """Write a minimal installed distribution into `site` (a folder on sys.path)."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    meta = ["Metadata-Version: 2.1", f"Name: {dist}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    eps = "[deepcourse.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(eps)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


def run_cli(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: int = 300
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepcourse", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: list[str], env: dict[str, str], *, processes: int = 2, port: int | None = None, timeout: int = 300,
           popen: bool = False) -> Any:
    """`accelerate launch` N CPU processes (gloo) running the deepcourse CLI; with popen=True, the started launcher
    in a process group of its own (to send it Ctrl-C as a terminal would). Each launch gets a port of its own unless
    `port` says, so that two test workers never share one and a resumed run never meets what is left of the stopped
    run on its port (suspected in a rare abort of a resumed two-process run's second rank, seen only under load)."""
    port = port or free_port()
    # `accelerate launch --cpu --num_processes 2` starts ONE process without mpirun (accelerate issue #2741);
    # --multi_gpu on a machine whose GPUs are hidden runs N CPU processes with gloo.
    env = {**env, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "deepcourse", *args]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


TOY_RECIPE = """\
name = "toy"
seed = 3
[task]
name = "toy-classification"
[data]
name = "toy_blobs"
batch_size = 16
n = 203
noise = 2.5
[model]
name = "toy_mlp"
hidden = 32
dropout = 0.3
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[scheduler]
name = "onecycle"
[train]
epochs = 3
log_every = 2
progress = false
"""


def final_weights(run: Path) -> dict:
    """The weights in a run's latest checkpoint (to compare an interrupted run with an uninterrupted one)."""
    from safetensors.torch import load_file

    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    return load_file(str(last / "model.safetensors"))


#: the toy recipe the study tests search over, up to its [train] table (each test adds train keys and [search])
TOY_SEARCH_HEAD = """\
name = "toysearch"
seed = 1
[task]
name = "toy-classification"
[data]
name = "toy_blobs"
batch_size = 16
n = 64
[model]
name = "toy_mlp"
[optimizer]
name = "sgd"
lr = 0.1
[train]
epochs = 2
progress = false
"""
