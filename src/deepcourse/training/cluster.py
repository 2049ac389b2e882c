"""Starting on Slurm without a second launcher: each task of `srun` is one training process.

`deepcourse run --slurm` reads the task's own Slurm variables (rank, task count, node-local rank, the job's node
list) and sets the torch.distributed ones Accelerate starts from (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), as Lightning's SLURMEnvironment and submitit's TorchDistributedEnvironment do. Every value
comes from the task's environment, which Slurm sets per task: nothing is expanded once by the batch shell, the
mistake that made every node rank 0 in the torchrun script this replaces.
"""
from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

from deepcourse.errors import UserError

__all__ = ["slurm_environment", "adopt_slurm", "first_host", "PORT_BASE"]

#: MASTER_PORT is PORT_BASE + the job id modulo 10,000: the same on every task of a job, different between jobs
PORT_BASE = 20000
_TORCH = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[07-09,12],cpu1' -> 'gpu07' (what `scontrol show hostnames` prints
    first), without calling scontrol."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not head or not head.group(1):
        raise UserError(f"--slurm: cannot read the node list {nodelist!r} (SLURM_JOB_NODELIST)")
    if not head.group(3):
        return head.group(1)
    first = head.group(3).split(",")[0].split("-")[0]
    return head.group(1) + first


def _tasks_per_node(value: str) -> int:
    """'4', '4(x2)' or '4(x2),2' (SLURM_STEP_TASKS_PER_NODE): the count on the first node."""
    match = re.match(r"(\d+)", value)
    if not match:
        raise UserError(f"--slurm: cannot read the tasks per node {value!r} (SLURM_STEP_TASKS_PER_NODE)")
    return int(match.group(1))


def slurm_environment(environ: MutableMapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables for this Slurm task, or a UserError saying what is missing."""
    if "SLURM_PROCID" not in environ:
        raise UserError("--slurm: this process is not a task of a Slurm job step (SLURM_PROCID is not set); start it "
                        "with srun inside an sbatch script or salloc, one task per GPU (see docs/scaling.md)")
    missing = [k for k in ("SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_ID") if k not in environ]
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if missing or not nodelist:
        raise UserError(f"--slurm: the Slurm task environment lacks {', '.join(missing or ['SLURM_JOB_NODELIST'])}")
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_NTASKS_PER_NODE") or "1"
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ["SLURM_NTASKS"],
            "LOCAL_RANK": environ["SLURM_LOCALID"], "LOCAL_WORLD_SIZE": str(_tasks_per_node(per_node)),
            "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(nodelist),
            "MASTER_PORT": environ.get("MASTER_PORT") or str(PORT_BASE + int(environ["SLURM_JOB_ID"]) % 10000)}


def adopt_slurm(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the torch.distributed variables from the Slurm ones (in `os.environ` by default); returns them.

    Refuses a task already started by another launcher (torchrun or accelerate launch inside srun set RANK), and
    a task that sees fewer GPUs than tasks share its node (`--gpus-per-task` hides the others; ask for
    `--gpus-per-node` instead, so LOCAL_RANK picks the task's GPU)."""
    environ = os.environ if environ is None else environ
    found = slurm_environment(environ)
    if "RANK" in environ and environ["RANK"] != found["RANK"]:
        raise UserError(f"--slurm: RANK is already set ({environ['RANK']}) by another launcher; start deepcourse "
                        f"directly under srun with --slurm, or under torchrun/accelerate launch without it")
    gpus = _visible_gpus(environ)
    if gpus is not None and 0 < gpus < int(found["LOCAL_WORLD_SIZE"]):
        raise UserError(f"--slurm: this task sees {gpus} GPU(s) but {found['LOCAL_WORLD_SIZE']} tasks share its "
                        f"node; ask Slurm for --gpus-per-node (every task sees the node's GPUs and takes the one of "
                        f"its local rank), not --gpus-per-task")
    for key in _TORCH:
        environ[key] = found[key]
    return found


def _visible_gpus(environ: MutableMapping[str, str]) -> int | None:
    """How many GPUs this task may use, from CUDA_VISIBLE_DEVICES (None: not restricted, or no GPU at all)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return len([d for d in visible.split(",") if d.strip()])
