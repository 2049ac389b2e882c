"""`deepcourse tune --launcher slurm`: a study's workers as a Slurm job array, through submitit.

Each array task is one worker with its GPUs; it works on the study until the budget is done, then writes the
report. When Slurm preempts it or its time runs out, submitit calls `checkpoint`: the worker stops its running
trial (SIGTERM: the run saves a checkpoint) and is requeued; the new incarnation fails its predecessor's trial and
resumes it from that checkpoint. The study's storage must be one every node reaches: the study folder's journal
file on a shared filesystem, or a database (`--storage postgresql://...`).
"""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import submitit

from deepcourse.studies.spec import StudySpec, load_spec
from deepcourse.studies.study import WORKER_ENV, stop_child, work


class Worker(submitit.helpers.Checkpointable):
    """One study worker, as a Slurm array task (picklable: submitit sends it to the node)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.child: subprocess.Popen[bytes] | None = None

    def __call__(self, index: int) -> str:
        from deepcourse.discovery import load_plugins
        from deepcourse.studies.processes import visible_gpus
        from deepcourse.studies.tune import finish

        load_plugins()  # a fresh process on the node: its recipe is read against the registries the plugins fill
        os.environ.setdefault(WORKER_ENV, f"{socket.gethostname()}:{os.getpid()}:{index}")
        spec = load_spec(Path(self.folder), "tune")
        study = work(spec, jobs=1, gpus=visible_gpus()[:1], on_child=self._track)
        return str(finish(spec, study, print))

    def _track(self, proc: subprocess.Popen[bytes] | None) -> None:
        self.child = proc

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        stop_child(self.child)  # the running trial saves its checkpoint, which the requeued worker resumes
        self.child = None
        return super().checkpoint(*args, **kwargs)


def parameters(workers: int, *, partition: str | None, time: int, gpus: int, cpus: int, mem: str | None,
               name: str) -> dict[str, Any]:
    """submitit's parameters for the array (AutoExecutor names): one task per worker, all at once."""
    params: dict[str, Any] = {"name": name, "timeout_min": time, "gpus_per_node": gpus, "cpus_per_task": cpus,
                              "tasks_per_node": 1, "nodes": 1, "slurm_array_parallelism": workers}
    if partition:
        params["slurm_partition"] = partition
    if mem:
        params["slurm_mem"] = mem
    return params


def submit(spec: StudySpec, workers: int, *, partition: str | None = None, time: int = 60, gpus: int = 1,
           cpus: int = 8, mem: str | None = None, cluster: str | None = None) -> list[str]:
    """Submit `workers` workers (`cluster="local"` runs them as local processes: the same code path, no sbatch)."""
    executor = submitit.AutoExecutor(folder=spec.folder / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(**parameters(workers, partition=partition, time=time, gpus=gpus, cpus=cpus, mem=mem,
                                            name=f"deepcourse-{spec.name}"))
    jobs = executor.map_array(Worker(str(spec.folder)), list(range(workers)))
    return [job.job_id for job in jobs]
