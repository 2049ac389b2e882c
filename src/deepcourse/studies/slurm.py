"""`deepcourse tune --launcher slurm`: a study's workers as a Slurm job array, through submitit.

Each array task is one worker with its GPUs (`--gpus-per-worker N`: N trials at a time, one GPU each); it works on
the study until the budget is done, then writes the report. When Slurm preempts it or its time runs out, submitit
calls `checkpoint` (SIGUSR2): the worker takes no new trial, its running trials save a checkpoint (SIGTERM) and are
recorded as stopped, and only then is it requeued; the new incarnation resumes those trials from their checkpoints.
The study's storage must be one every node reaches: the study folder's journal file on a shared filesystem, or a
database (`--storage postgresql://...`).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

import submitit

from deepcourse.errors import UserError
from deepcourse.studies.processes import Stopped, WorkerStop
from deepcourse.studies.spec import StudySpec, load_spec
from deepcourse.studies.study import WORKER_ENV, work

#: how long a preempted worker waits for its trials to save before it is requeued: within the 90 s between
#: submitit's SIGUSR2 and the end of the job
SAVE_WAIT_S = 75


class Worker(submitit.helpers.Checkpointable):
    """One study worker, as a Slurm array task (picklable: submitit sends it to the node, and again at a requeue)."""

    def __init__(self, folder: str, gpus: int = 1) -> None:
        self.folder, self.gpus = folder, gpus
        self.stop: WorkerStop | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "gpus": self.gpus}  # what a requeued worker needs, not this one's runs

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder, self.gpus, self.stop = state["folder"], state.get("gpus", 1), None

    def __call__(self, index: int) -> str:
        from deepcourse.discovery import load_plugins
        from deepcourse.studies.processes import visible_gpus
        from deepcourse.studies.tune import finish

        load_plugins()  # a fresh process on the node: its recipe is read against the registries the plugins fill
        os.environ.setdefault(WORKER_ENV, f"{socket.gethostname()}:{os.getpid()}:{index}")
        spec = load_spec(Path(self.folder), "tune")
        gpus = visible_gpus()[:self.gpus]
        if 0 < len(gpus) < self.gpus:
            print(f"deepcourse: {self.gpus} GPUs per worker asked for, {len(gpus)} visible: the worker's "
                  f"{self.gpus} trials at a time share them")
        self.stop = stop = WorkerStop()  # no handlers of its own: submitit's SIGUSR2 calls `checkpoint`
        try:
            study = work(spec, jobs=max(1, self.gpus), gpus=gpus, stop=stop)
            return str(finish(spec, study, print, stop))
        except Stopped as stopped:  # a run stopped on its own (scancel): the study stops, --resume continues it
            return f"{stopped}; continue with: deepcourse tune --resume {stopped.folder}"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Preempted or out of time: take no new trial, let the running ones save and be recorded as stopped, then
        hand submitit this worker to requeue (it exits, and its successor resumes the stopped trials)."""
        if self.stop is not None:
            self.stop.request(int(signal.SIGUSR2))
            self.stop.wait_stopped(SAVE_WAIT_S)
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


def check_cluster(cluster: str) -> None:
    """`--launcher slurm` needs Slurm's sbatch here (a login node), unless `--cluster local` asks for local
    processes: never a silent fall-back that says it submitted to Slurm."""
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch is not on PATH (no Slurm on this machine): submit from a Slurm "
                        "login node, run the workers here with --launcher local, or try the Slurm path with local "
                        "processes with --cluster local")


def submit(spec: StudySpec, workers: int, *, partition: str | None = None, time: int = 60, gpus: int = 1,
           cpus: int = 8, mem: str | None = None, cluster: str = "slurm") -> list[submitit.Job[str]]:
    """Submit `workers` workers to Slurm (`cluster="local"`: as local processes, submitit's local executor, the same
    code path without sbatch)."""
    check_cluster(cluster)
    executor = submitit.AutoExecutor(folder=spec.folder / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(**parameters(workers, partition=partition, time=time, gpus=gpus, cpus=cpus, mem=mem,
                                            name=f"deepcourse-{spec.name}"))
    return executor.map_array(Worker(str(spec.folder), gpus), list(range(workers)))
