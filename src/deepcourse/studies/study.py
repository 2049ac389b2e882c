"""Studies: a hyperparameter search (`deepcourse tune`) or a sweep (`deepcourse sweep`), as one Optuna study whose
trials are normal run directories, run by any number of workers on any number of machines.

    STUDY_DIR/  (runs/<recipe>/study-<name>/, or runs/<recipe>/sweep-<time>/)
        study.json / sweep.json   what the study is: recipe, overrides, space or grid, budget, storage
        study.log                 the embedded storage (Optuna's journal file), unless --storage names a database
        <trial>/ and <trial>.log  each trial's run directory and output (sweeps: 000-model.dropout=0.5/)
        study.md, study.csv       every trial: state, value, parameters, wall time

A worker takes a trial from the storage (a sweep's points are queued there when it is created, so no point is run
twice, however many workers), runs `deepcourse run` for it in a subprocess (a failing run does not take the worker
down) and records the result. A worker that dies leaves its trial RUNNING: the next worker to start marks it
stopped (a dead process on this machine, or a stale heartbeat of a database storage) and queues a retry that resumes
the same run directory from its checkpoint. A trial that stopped (Ctrl-C, preemption) is retried the same way;
budgets count finished (completed or pruned) trials, and only runs that failed count as failures.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepcourse.errors import UserError
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.overrides import toml_literal
from deepcourse.rundir.files import read_json
from deepcourse.studies.processes import PARENT_ENV, STOP_CODES, WorkerStop
from deepcourse.studies.spec import StudySpec
from deepcourse.studies.store import HEARTBEAT_S, PRUNED_FILE, open_storage, shown
from deepcourse.training.checkpoint import latest_checkpoint

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

MAX_RETRIES = 2
WORKER_ENV = "DEEPCOURSE_WORKER"


def worker_id() -> str:
    """Who runs a trial: a Slurm array task (the same after a requeue), else this machine and process."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        return f"slurm:{job}_{task}"
    return os.environ.get(WORKER_ENV) or f"{socket.gethostname()}:{os.getpid()}"


# -- storage and study -----------------------------------------------------------------------------------------
def open_study(spec: StudySpec, *, create: bool) -> optuna.Study:
    """The study in its storage; `create`: make it (and queue a sweep's points) unless it exists."""
    import optuna

    from deepcourse.studies.samplers import pruner_of, sampler_of

    storage = open_storage(spec.storage, spec.origin, new=create)
    try:
        if not create:
            raise KeyError
        study = optuna.create_study(study_name=spec.name, storage=storage, direction=spec.direction,
                                    sampler=sampler_of(spec), pruner=pruner_of(spec))
    except (KeyError, optuna.exceptions.DuplicatedStudyError):
        try:
            return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler_of(spec),
                                     pruner=pruner_of(spec))
        except KeyError:
            where = " ".join(filter(None, (spec.origin, shown(spec.storage))))
            raise UserError(f"{where}: holds no study '{spec.name}' (emptied or replaced since the study began); "
                            f"restore it from a copy, or start a new study") from None
    for point in spec.points:  # created here and only here: each point is queued once
        study.enqueue_trial(point["params"], user_attrs={"run_dir": point["dir"], "label": point["label"]})
    return study


# -- the trials ---------------------------------------------------------------------------------------------------
def finished(trial: FrozenTrial) -> bool:
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def budget_left(study: optuna.Study, spec: StudySpec) -> int:
    """Trials still to start: the budget less the finished and the running ones (queued ones still count)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    busy = sum(1 for t in trials if finished(t) or t.state == TrialState.RUNNING)
    return spec.trials - busy


def recover(study: optuna.Study, spec: StudySpec) -> list[int]:
    """Fail the trials of workers that died (on this machine: their process is gone; elsewhere: a stale heartbeat)
    as stopped, not failed (a preempted or killed worker is no fault of its trial's), then queue one retry of every
    stopped trial (from its checkpoint, or from the start when it stopped before its first one: its parameters are
    not lost), of every failed trial that left a checkpoint to resume, and of every failed queued point (a sweep
    told to continue runs its failed points again). Returns the retried trial numbers."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage  # Optuna's storage API (set_trial_state_values) is public; the handle
    host, me = socket.gethostname(), worker_id()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        dead_here = attrs.get("host") == host and isinstance(attrs.get("pid"), int) and not _alive(attrs["pid"])
        if dead_here or (attrs.get("worker") == me and attrs.get("pid") != os.getpid()):  # or my requeued self's
            if attrs.get("host") == host and isinstance(attrs.get("run_pid"), int):
                _wait_gone(attrs["run_pid"])  # its run got SIGTERM with its worker: let it save and stop first
            storage.set_trial_user_attr(trial._trial_id, "stopped", True)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    if isinstance(storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("retry_of") for t in trials if "retry_of" in t.user_attrs}
    retried = []
    for trial in trials:
        attrs = trial.user_attrs
        if trial.state != TrialState.FAIL or trial.number in taken or attrs.get("skipped"):
            continue
        run = spec.folder / str(attrs.get("run_dir", ""))
        saved = bool(attrs.get("run_dir")) and latest_checkpoint(run / "checkpoints") is not None
        stopped = interrupted(trial)
        point = "label" in attrs  # a queued point (sweep, grid search) must run: each --resume takes it again
        if stopped or (saved and attrs.get("retries", 0) < MAX_RETRIES) or point:
            study.enqueue_trial(trial.params, user_attrs={**{k: v for k, v in attrs.items() if k in ("run_dir",
                                                                                                      "label")},
                                                          "retry_of": trial.number,
                                                          "retries": attrs.get("retries", 0) + (not stopped)})
            retried.append(trial.number)
    return retried


def _wait_gone(pid: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def params_to_overrides(spec: StudySpec, trial: optuna.Trial) -> list[str]:
    """Sample (or take the queued values of) every dimension; the trial's recipe as --set overrides."""
    return [f"{dim.key}={toml_literal(dim.suggest(trial))}" for dim in spec.dims]


def trial_overrides(spec: StudySpec, params: Mapping[str, Any]) -> list[str]:
    """A finished trial's parameters as --set overrides (a categorical's label back to its recipe value)."""
    dims = {d.key: d for d in spec.dims}
    return [f"{k}={toml_literal(dims[k].value_of(v) if k in dims else v)}" for k, v in params.items()]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best completed trial, or None while no trial has completed."""
    try:
        return study.best_trial
    except ValueError:
        return None


def run_command(spec: StudySpec, run: Path, sets: Sequence[str], callbacks: Sequence[dict[str, Any]] = ()
                ) -> list[str]:
    """`deepcourse run` for one run of the study (a trial, or the best trial again with another seed): resumed from
    its latest checkpoint when it has one, else started in `run` from the recipe with the study's overrides and
    `sets` (a run that started but never checkpointed is removed: it starts over). `callbacks` are appended to the
    recipe's own `train.callbacks`, never put in their place."""
    cmd = [sys.executable, "-m", "deepcourse", "run"]
    resume = latest_checkpoint(run / "checkpoints") is not None
    if resume:
        cmd += ["--resume", str(run)]
    else:
        if run.exists():
            shutil.rmtree(run)
        # no run-time probe per run (train.estimate): the study reports its own progress; the user's --set still wins
        sets = ["train.estimate=false", *spec.overrides, *sets]
        cmd += [str(spec.recipe), "--run-dir", str(run), *[a for o in sets for a in ("--set", o)]]
    if callbacks:
        recipe = load_recipe(run / "recipe.toml") if resume else load_recipe(spec.recipe, [*spec.overrides, *sets])
        added = {cb["name"] for cb in callbacks}  # a resumed trial's recipe holds its earlier try's pruning callback
        own = [cb for cb in recipe.train.callbacks if cb.get("name") not in added]
        cmd += ["--set", "train.callbacks=" + toml_literal([*own, *callbacks])]
    return [*cmd, "--no-report"]


def pruning_callback(spec: StudySpec, trial: optuna.Trial) -> list[dict[str, Any]]:
    """The callback through which a trial reports to the study's pruner (none without a pruner)."""
    if spec.pruner == "none":
        return []
    return [{"name": "optuna_pruning", "storage": spec.storage, "study": spec.name, "trial": trial._trial_id,
             "monitor": spec.monitor}]


def run_trial(study: optuna.Study, spec: StudySpec, trial: optuna.Trial, env: Mapping[str, str],
              echo: Callable[[str], None], stop: WorkerStop | None = None) -> None:
    """Run one trial as `deepcourse run` in a subprocess and record its outcome in the study (a run stopped by
    Ctrl-C or SIGTERM as stopped, to be resumed, not failed)."""
    import optuna

    sets = params_to_overrides(spec, trial)
    name = trial.user_attrs.get("run_dir") or f"trial-{trial.number:04d}"
    for key, value in (("run_dir", name), ("host", socket.gethostname()), ("pid", os.getpid()),
                       ("worker", worker_id())):
        trial.set_user_attr(key, value)
    run = spec.folder / name
    if stop is not None and stop.requested:  # the stop came after the trial was taken: it never ran
        trial.set_user_attr("stopped", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    cmd = run_command(spec, run, sets, pruning_callback(spec, trial))
    started = time.perf_counter()
    with open(spec.folder / f"{name}.log", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid()), **env})
        trial.set_user_attr("run_pid", proc.pid)
        if stop is not None:
            stop.started(proc)
        storage = study._storage  # heartbeats for database storages, while the run runs
        while True:
            try:
                code = proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                if isinstance(storage, optuna.storages.RDBStorage):
                    storage.record_heartbeat(trial._trial_id)
    trial.set_user_attr("wall_time_s", round(time.perf_counter() - started, 1))
    trial.set_user_attr("exit_code", code)
    label = trial.user_attrs.get("label") or ", ".join(sets) or "base"
    if stop.ended(proc, run, code) if stop is not None else code in STOP_CODES:
        trial.set_user_attr("stopped", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        saved = "its state saved" if latest_checkpoint(run / "checkpoints") else "before its first checkpoint"
        echo(f"  stopped: trial {trial.number} ({label}), {saved} in {run}")
        return
    if code == 0 and (run / PRUNED_FILE).exists():
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        echo(f"  pruned: trial {trial.number} ({label}) at epoch {read_json(run / PRUNED_FILE)['epoch']}")
        return
    summary = read_json(run / "summary.json", missing={}) if code == 0 else {}
    value = summary.get("best", {}).get(spec.monitor)
    if value is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        why = f"exit {code}" if code else f"no {spec.monitor} in {run / 'summary.json'}"
        echo(f"  FAILED ({why}, see {spec.folder / f'{name}.log'}): trial {trial.number} ({label})")
        return
    study.tell(trial, float(value))
    echo(f"  done: trial {trial.number} ({label}): {spec.monitor} {value:.4f}")


def work(spec: StudySpec, *, jobs: int = 1, gpus: Sequence[str] = (), echo: Callable[[str], None] = print,
         stop: WorkerStop | None = None) -> optuna.Study:
    """A worker: `jobs` threads take trials until the budget is done (each run with its GPU, and its share of the
    CPU cores); returns the study. With `stop`, Ctrl-C (or a preemption) ends it once the running trials have saved:
    no thread takes another trial (`Stopped`)."""
    from concurrent.futures import ThreadPoolExecutor

    from deepcourse.studies.processes import DeviceSlots

    study = open_study(spec, create=False)
    retried = recover(study, spec)
    if retried:
        echo(f"  retrying trial(s) {', '.join(map(str, retried))} (from their checkpoints, where they have one)")
    slots = DeviceSlots(jobs, list(gpus))

    def loop() -> None:
        with stop.working() if stop is not None else contextlib.nullcontext():
            take_trials()

    def take_trials() -> None:
        import optuna

        while stop is None or not stop.requested:
            if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
                if spec.points or budget_left(study, spec) <= 0:
                    return  # a grid runs its queued points only; a search stops at its budget
                if failures(study) >= spec.trials:
                    echo(f"  stopping: {failures(study)} trials failed (as many as the budget); see their logs")
                    return
            trial = study.ask()
            if not trial.user_attrs.get("retry_of") and _over_budget(study, spec, trial.number):
                trial.set_user_attr("skipped", True)  # another worker took the last place first
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return
            with slots.take() as env:
                run_trial(study, spec, trial, env, echo, stop)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(loop) for _ in range(max(1, jobs))]:
            future.result()
    if stop is not None:
        stop.raise_if_stopped(spec.folder)
    return study


def failures(study: optuna.Study) -> int:
    """The trials whose run failed: not those stopped, preempted or lost with their worker (`interrupted`)."""
    from optuna.trial import TrialState

    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return sum(1 for t in failed if not t.user_attrs.get("skipped") and not interrupted(t))


def interrupted(trial: FrozenTrial) -> bool:
    """A trial that ended without failing: stopped (Ctrl-C, SIGTERM, a Slurm preemption or time limit), or whose
    worker died before its run's exit was recorded (killed, preempted, a lost node, a stale database heartbeat)."""
    return bool(trial.user_attrs.get("stopped")) or "exit_code" not in trial.user_attrs


def _over_budget(study: optuna.Study, spec: StudySpec, number: int) -> bool:
    """Trials take their places in number order: beyond the budget if as many live ones come before it."""
    from optuna.trial import TrialState

    ahead = [t for t in study.get_trials(deepcopy=False) if t.number < number and
             t.state != TrialState.FAIL]
    return len(ahead) >= spec.trials
