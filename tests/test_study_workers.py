"""Studies at scale (issue 22): several workers on one study draw different trials, a resumed study draws new ones,
the best configuration's seeds belong to one configuration, lost trials are no failures, `-j N` divides the cores,
and a Slurm worker asked to requeue takes no other trial first (through submitit's local executor).

Most tests run the real study loop (`work`, `final_seeds`) on a real journal file, with `deepcourse run` replaced by
`FakeRun`, which writes the summary a run would write: what is tested is which runs the study starts, not training.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from core_support import TOY_SEARCH_HEAD, make_distribution

SEARCH = TOY_SEARCH_HEAD + """\
{train}
[search]
trials = {trials}
sampler = "{sampler}"
pruner = "none"
seeds = {seeds}
[search.space]
"optimizer.lr" = {space}
"model.hidden" = {{ low = 4, high = 64, step = 4 }}
"""
REAL_POPEN = subprocess.Popen  # the tests replace it in the study's modules
RANGE = "{ low = 0.001, high = 0.5, log = true }"


def search_recipe(folder: Path, trials: int = 4, sampler: str = "tpe", seeds: int = 1, space: str = RANGE,
                  train: str = "") -> Path:
    path = folder / "search.toml"
    path.write_text(SEARCH.format(trials=trials, sampler=sampler, seeds=seeds, space=space, train=train))
    return path


class FakeRun:
    """`deepcourse run` as a study starts it (subprocess.Popen), without training: `wait` calls `hook` (the test's
    moment), then writes the summary.json a finished run writes, with `value(cmd)` as its accuracy."""

    started: list[FakeRun] = []
    hook: Callable[[FakeRun], None] = staticmethod(lambda run: None)
    value: Callable[[list[str]], float] = staticmethod(lambda cmd: 0.5)

    def __init__(self, cmd: list[str], stdout: Any = None, stderr: Any = None, env: dict[str, str] | None = None
                 ) -> None:
        self.cmd, self.env, self.returncode = cmd, env or {}, None
        self.pid = 4_194_305  # above Linux's largest pid_max: no process has it
        self.run = Path(cmd[cmd.index("--run-dir") + 1])
        self.thread = threading.current_thread().name
        FakeRun.started.append(self)

    def sets(self) -> dict[str, str]:
        return dict(self.cmd[i + 1].split("=", 1) for i, arg in enumerate(self.cmd) if arg == "--set")

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            FakeRun.hook(self)
            self.run.mkdir(parents=True, exist_ok=True)
            (self.run / "summary.json").write_text(json.dumps({"best": {"accuracy": FakeRun.value(self.cmd)}}))
            self.returncode = 0
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode


@pytest.fixture()
def fake_runs(monkeypatch: pytest.MonkeyPatch, plugin_site: Path) -> type[FakeRun]:
    from deepcourse.studies import study, tune

    monkeypatch.setattr(FakeRun, "started", [])
    monkeypatch.setattr(FakeRun, "hook", staticmethod(lambda run: None))  # what a test sets is undone after it
    monkeypatch.setattr(study.subprocess, "Popen", FakeRun)
    monkeypatch.setattr(tune.subprocess, "Popen", FakeRun)
    return FakeRun


def configurations(folder: Path) -> list[tuple[int, tuple]]:
    """(trial number, parameters) of every trial of the study in `folder`, in order."""
    from deepcourse.studies.spec import load_spec
    from deepcourse.studies.study import open_study

    study = open_study(load_spec(folder, "tune"), create=False)
    return [(t.number, tuple(sorted(t.params.items()))) for t in sorted(study.get_trials(), key=lambda t: t.number)
            if not t.user_attrs.get("skipped")]  # asked for by a worker that found the budget taken: never ran


# -- 1. several workers, one study ------------------------------------------------------------------------------------
def test_two_workers_on_one_journal_study_draw_different_configurations(tmp_path: Path, fake_runs) -> None:
    """Two workers, each with its own study object on one journal file (as two `tune` commands have), start their
    first trials before either finishes one (a barrier decides the moment): seeded alike, they drew the same
    configurations pairwise (4 trials, 2 configurations)."""
    from deepcourse.studies import tune
    from deepcourse.studies.study import work

    spec = tune.prepare(str(search_recipe(tmp_path, trials=4)), study_name="two", runs_root=tmp_path / "runs")
    both_started = threading.Barrier(2, timeout=60)
    fake_runs.hook = staticmethod(lambda run: both_started.wait() if len(fake_runs.started) <= 2 else None)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            work(spec, jobs=1, echo=lambda line: None)
        except BaseException as error:  # noqa: BLE001 - shown by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker, name=f"worker{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    trials = configurations(spec.folder)
    assert len(trials) == 4 and len({params for _, params in trials}) == 4, trials
    assert len({run.thread for run in fake_runs.started}) == 2  # each worker ran trials (its own pool thread)


def test_a_resumed_study_does_not_draw_its_first_trials_again(tmp_path: Path, fake_runs) -> None:
    from deepcourse.studies import tune
    from deepcourse.studies.study import work

    spec = tune.prepare(str(search_recipe(tmp_path, trials=2)), study_name="again", runs_root=tmp_path / "runs")
    work(spec, jobs=1, echo=lambda line: None)
    resumed = tune.prepare(None, resume=spec.folder, trials=4)  # a new process would build its sampler anew
    work(resumed, jobs=1, echo=lambda line: None)
    trials = configurations(spec.folder)
    assert len(trials) == 4 and len({params for _, params in trials}) == 4, trials


def test_a_grid_keeps_its_order_whoever_takes_its_points(tmp_path: Path, fake_runs) -> None:
    from deepcourse.studies import tune
    from deepcourse.studies.study import work

    recipe = search_recipe(tmp_path, sampler="grid", space="[0.01, 0.1]")
    recipe.write_text(recipe.read_text().replace("{ low = 4, high = 64, step = 4 }", "[4, 8]"))
    spec = tune.prepare(str(recipe), study_name="grid", runs_root=tmp_path / "runs")
    work(spec, jobs=2, echo=lambda line: None)
    runs = sorted((t.user_attrs["run_dir"], t.number, t.params) for t in _study(spec).get_trials()
                  if not t.user_attrs.get("skipped"))  # a thread that found the grid taken asked for one too many
    assert [(name, number) for name, number, _ in runs] == [("grid-000", 0), ("grid-001", 1), ("grid-002", 2),
                                                            ("grid-003", 3)]
    assert [tuple(params.values()) for _, _, params in runs] == [(0.01, 4), (0.01, 8), (0.1, 4), (0.1, 8)]


def _study(spec):
    from deepcourse.studies.study import open_study

    return open_study(spec, create=False)


# -- 1. the best configuration's seeds --------------------------------------------------------------------------------
def _told(study, spec, value: float, number: int) -> None:
    """Trial `number` of the study, finished with `value` (as a worker records it)."""
    from deepcourse.studies.study import params_to_overrides

    trial = study.ask()
    assert trial.number == number
    params_to_overrides(spec, trial)
    trial.set_user_attr("run_dir", f"trial-{number:04d}")
    trial.set_user_attr("exit_code", 0)
    study.tell(trial, value)


def test_the_seeds_of_two_best_configurations_never_share_a_run(tmp_path: Path, fake_runs) -> None:
    """A worker that finishes first runs the seeds of the best trial it knows; a later worker whose best is
    another trial must run that trial's seeds, not read the first one's as its own."""
    from deepcourse.studies import tune

    spec = tune.prepare(str(search_recipe(tmp_path, seeds=3)), study_name="seeds", runs_root=tmp_path / "runs")
    study, said = _study(spec), []
    _told(study, spec, 0.6, 0)
    first = tune.final_seeds(spec, study, 3, said.append)
    _told(study, spec, 0.9, 1)
    second = tune.final_seeds(spec, study, 3, said.append)
    assert [name for name, _ in first] == ["trial-0000", "trial-0000-seed2", "trial-0000-seed3"]
    assert [name for name, _ in second] == ["trial-0001", "trial-0001-seed2", "trial-0001-seed3"]
    best = study.trials[1].params
    for run in fake_runs.started[2:]:  # the second best's seeds ran with its own parameters
        assert float(run.sets()["optimizer.lr"]) == pytest.approx(best["optimizer.lr"])
        assert int(run.sets()["model.hidden"]) == best["model.hidden"]
    assert len(fake_runs.started) == 4
    # a third call (another worker, or a requeued one) reads them, and runs nothing
    assert tune.final_seeds(spec, study, 3, said.append) == second and len(fake_runs.started) == 4


def test_the_seeds_wait_for_the_last_worker(tmp_path: Path, fake_runs) -> None:
    """While another worker's trial runs, the best is not known: the seeds are left to the worker that ends last."""
    from deepcourse.studies import tune

    spec = tune.prepare(str(search_recipe(tmp_path, seeds=3)), study_name="last", runs_root=tmp_path / "runs")
    study, said = _study(spec), []
    _told(study, spec, 0.6, 0)
    study.ask()  # another worker's trial, running
    assert tune.final_seeds(spec, study, 3, said.append) == [("trial-0000", 0.6)]
    assert fake_runs.started == [] and "left to the worker that finishes last (1 trial(s) still running" in said[0]


# -- 1. what counts as failed ---------------------------------------------------------------------------------------
def test_trials_lost_with_their_worker_are_not_failures_and_run_again(tmp_path: Path, plugin_site) -> None:
    """A trial whose worker died (killed, preempted: its process is gone) is stopped, not failed: it does not count
    toward "as many trials failed as the budget", and it runs again with its parameters, from the start when it never
    saved."""
    import optuna

    from deepcourse.studies import tune
    from deepcourse.studies.study import failures, recover

    spec = tune.prepare(str(search_recipe(tmp_path, trials=1)), study_name="lost", runs_root=tmp_path / "runs")
    study = _study(spec)
    lost = study.ask()
    for key, value in (("run_dir", "trial-0000"), ("host", socket.gethostname()), ("pid", 4_194_305)):
        lost.set_user_attr(key, value)
    lost.suggest_float("optimizer.lr", 0.001, 0.5, log=True)
    failed = study.ask()
    failed.set_user_attr("exit_code", 1)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert recover(study, spec) == [0]
    assert failures(study) == 1  # the run that failed, not the one lost with its worker
    retry = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[0]
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["run_dir"] == "trial-0000"
    assert study.trials[0].user_attrs["stopped"] is True


# -- 12. -j N divides the cores ---------------------------------------------------------------------------------------
def test_jobs_at_a_time_share_the_cores(tmp_path: Path, fake_runs, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepcourse.studies import processes, tune
    from deepcourse.studies.study import work

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert processes.DeviceSlots(2, []).threads == {"OMP_NUM_THREADS": "4"}
    assert processes.DeviceSlots(3, ["0"]).threads == {"OMP_NUM_THREADS": "2"}
    assert processes.DeviceSlots(16, []).threads == {"OMP_NUM_THREADS": "1"}
    assert processes.DeviceSlots(1, []).threads == {}  # one run: torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert processes.DeviceSlots(2, []).threads == {}  # the user's choice stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # this machine, as the tests assume it
    spec = tune.prepare(str(search_recipe(tmp_path, trials=2)), study_name="cores", runs_root=tmp_path / "runs")
    work(spec, jobs=2, echo=lambda line: None)
    assert [run.env.get("OMP_NUM_THREADS") for run in fake_runs.started] == ["1", "1"]
    # and torch, in the run's process, takes it: one thread each instead of one per core
    with REAL_POPEN([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], text=True,
                    env={**os.environ, **fake_runs.started[0].env}, stdout=subprocess.PIPE) as probe:
        assert probe.communicate()[0].strip() == "1"


# -- 9. --gpus-per-worker ----------------------------------------------------------------------------------------------
def test_a_slurm_worker_uses_every_gpu_it_asked_for(tmp_path: Path, plugin_site, monkeypatch) -> None:
    pytest.importorskip("submitit")
    from deepcourse.studies import slurm, tune

    spec = tune.prepare(str(search_recipe(tmp_path)), study_name="gpus", runs_root=tmp_path / "runs")
    seen: dict[str, Any] = {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # what Slurm shows a task given --gpus-per-node=2
    monkeypatch.setattr(slurm, "work", lambda spec, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(tune, "finish", lambda spec, study, echo, stop=None: spec.folder)
    slurm.Worker(str(spec.folder), gpus=2)(0)
    assert seen["jobs"] == 2 and seen["gpus"] == ["4", "5"]  # two trials at a time, one GPU each
    assert slurm.parameters(4, partition=None, time=9, gpus=2, cpus=8, mem=None, name="x")["gpus_per_node"] == 2


# -- 3. the checkpoint path, called as submitit calls it --------------------------------------------------------------
def test_checkpoint_stops_the_trial_takes_no_other_and_hands_back_a_clean_worker(tmp_path: Path, plugin_site,
                                                                                 monkeypatch) -> None:
    """submitit calls `checkpoint` on SIGUSR2. The trial's run here has no signal handler of its own yet (a run
    stopped while it starts): SIGTERM kills it, and it is recorded as stopped, not failed; the worker starts no
    other trial, and what it hands submitit to requeue holds no state of this incarnation."""
    pytest.importorskip("submitit")
    import pickle

    from deepcourse.studies import processes, slurm, study, tune
    from deepcourse.studies.study import failures

    spec = tune.prepare(str(search_recipe(tmp_path, trials=3)), study_name="ckpt", runs_root=tmp_path / "runs")
    commands: list[list[str]] = []
    a_run_started = threading.Event()

    def run_command(spec: Any, run: Path, sets: Any, callbacks: Any = ()) -> list[str]:
        commands.append([str(run), *sets])
        return [sys.executable, "-c", "import signal; signal.pause()"]  # a run that waits for a signal, no handler

    real_started = processes.WorkerStop.started

    def started(self: processes.WorkerStop, proc: subprocess.Popen[bytes]) -> None:
        real_started(self, proc)
        a_run_started.set()

    monkeypatch.setattr(study, "run_command", run_command)
    monkeypatch.setattr(processes.WorkerStop, "started", started)
    worker, ended = slurm.Worker(str(spec.folder), gpus=0), []
    thread = threading.Thread(target=lambda: ended.append(worker(0)))
    thread.start()
    assert a_run_started.wait(60)
    delayed = worker.checkpoint(0)
    thread.join(60)
    assert not thread.is_alive()
    assert ended == [f"stopped by SIGUSR2; continue with: deepcourse tune --resume {spec.folder}"]
    assert len(commands) == 1  # no trial after the stop
    (trial,) = _study(spec).get_trials()
    assert trial.state.name == "FAIL" and trial.user_attrs["stopped"] is True and trial.user_attrs["exit_code"] < 0
    assert failures(_study(spec)) == 0
    again = pickle.loads(pickle.dumps(delayed.function))
    assert (again.folder, again.gpus, again.stop) == (str(spec.folder), 0, None)


# -- 3. a Slurm worker asked to requeue --------------------------------------------------------------------------------
PREEMPT = '''
import os
import signal
import threading
from pathlib import Path

from deepcourse.api import CALLBACKS, Callback


@CALLBACKS.register("preempt_worker_at")
class PreemptWorkerAt(Callback):
    """Once (a marker file says so), after optimizer step `step`: what Slurm does before a time limit, SIGUSR2 to the
    study's worker (this run's parent); then wait for the SIGTERM the worker sends on, so the run is stopped there."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_step_end(self, ctx, loss) -> None:
        if ctx.state.global_step == self.step and not self.marker.exists():
            arrived = threading.Event()
            handler = signal.getsignal(signal.SIGTERM)  # the run's own: it must still see the SIGTERM

            def passed_on(signum, frame):
                handler(signum, frame)
                arrived.set()

            signal.signal(signal.SIGTERM, passed_on)
            self.marker.write_text(str(os.getppid()))
            os.kill(os.getppid(), signal.SIGUSR2)
            while not arrived.wait(0.05):  # until the worker's SIGTERM has reached the run's handler (any other
                pass                        # signal, which woke signal.pause() before, no longer ends the wait)
            signal.signal(signal.SIGTERM, handler)
'''


@pytest.mark.slow
def test_a_preempted_slurm_worker_takes_no_new_trial_and_is_requeued(tmp_path: Path, cli_env, monkeypatch) -> None:
    """Through submitit's local executor: SIGUSR2 to the worker during trial 0 (from inside the trial's run, at
    step 2). The worker stops the trial (it saves), starts no other, and exits to be requeued; its next incarnation
    resumes trial 0 from its checkpoint and finishes the study."""
    pytest.importorskip("submitit")
    from deepcourse.studies import slurm, tune

    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "deepcourse-preempt", {"preempt": "preempt_plugin"}, {"preempt_plugin": PREEMPT})
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), cli_env["PYTHONPATH"]]))
    monkeypatch.syspath_prepend(str(site))
    from deepcourse import discovery

    discovery.refresh()
    marker = tmp_path / "preempted"
    recipe = search_recipe(tmp_path, trials=2, train=f"callbacks = [{{name = 'preempt_worker_at', step = 2, marker = "
                                                      f"'{marker}'}}]")
    monkeypatch.chdir(tmp_path)
    spec = tune.prepare(str(recipe), study_name="preempted", runs_root=tmp_path / "runs")
    (job,) = slurm.submit(spec, 1, cluster="local")
    assert job.result() == str(spec.folder)  # submitit waits for the array task, requeues included
    first = int(marker.read_text())  # the first incarnation's pid
    trials = sorted(_study(spec).get_trials(), key=lambda t: t.number)
    assert [t.number for t in trials if t.user_attrs.get("pid") == first] == [0]  # no trial after the stop
    assert trials[0].state.name == "FAIL" and trials[0].user_attrs["stopped"] is True
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    assert retry.state.name == "COMPLETE" and retry.user_attrs["run_dir"] == "trial-0000"
    assert retry.user_attrs["pid"] != first
    assert "resuming" in (spec.folder / "trial-0000.log").read_text()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    logs = "".join(p.read_text() for p in (spec.folder / "slurm").rglob("*.out"))  # submitit's own log
    assert logs.count("Requeued job") == 1 and logs.count("Job completed successfully") == 1, logs
