"""The same recipe from one CPU process to several processes and machines: launcher settings, compile, stops that
every process agrees on, checkpoints written by the main process alone, trackers, and the GPU-side options (checked
for equal results where a CPU can run them)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from core_support import final_weights, launch, run_cli
from safetensors.torch import load_file

TIMING_KEYS = {"samples_per_s", "seconds"}


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = final_weights(a), final_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# -- launcher against recipe --------------------------------------------------------------------------------------
def test_launcher_settings_apply_unless_the_recipe_sets_its_own(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    env = {**cli_env, "ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(tmp_path / "launcher"), "--no-report"], env)
    assert out.returncode == 0, out.stderr
    info = json.loads((tmp_path / "launcher" / "run.json").read_text())
    assert (info["mixed_precision"], info["grad_accum"]) == ("bf16", 4)
    assert info["settings_from"] == {"mixed_precision": "launcher", "grad_accum": "launcher", "compile": "default"}
    epochs = [r["step"] for r in rows(tmp_path / "launcher") if r["split"] == "train" and r["scope"] == "epoch"]
    assert epochs == [3, 6, 9]  # 10 batches an epoch, 4 per optimizer step: the accelerator's count, not 1's
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(tmp_path / "recipe"), "--no-report",
                   "--set", "train.mixed_precision='no'", "--set", "train.grad_accum=2"], env)
    assert out.returncode == 0, out.stderr
    assert "warning: train.mixed_precision = 'no' (the recipe's) is used; the launcher says 'bf16'" in out.stderr
    assert "warning: train.grad_accum = 2 (the recipe's) is used; the launcher says 4" in out.stderr
    info = json.loads((tmp_path / "recipe" / "run.json").read_text())
    assert (info["mixed_precision"], info["grad_accum"], info["settings_from"]["grad_accum"]) == ("no", 2, "recipe")
    resumed = run_cli(["run", "--resume", str(tmp_path / "launcher")], {**cli_env, "ACCELERATE_MIXED_PRECISION": "no"})
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert "mixed_precision: the run trained with 'bf16', now 'no'" in resumed.stderr


def test_what_cannot_run_here_exits_2_naming_what_can(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    runs = tmp_path / "runs"
    out = run_cli(["run", str(toy_recipe), "--runs-root", str(runs), "--set", "train.mixed_precision='fp16'"],
                  cli_env)
    assert out.returncode == 2 and "train.mixed_precision: 'fp16' needs a CUDA GPU" in out.stderr
    assert "Valid here: 'bf16' (CPU autocast) or 'no'" in out.stderr
    out = run_cli(["run", str(toy_recipe), "--runs-root", str(runs)],
                  {**cli_env, "ACCELERATE_MIXED_PRECISION": "fp16"})
    assert out.returncode == 2
    assert "accelerate launch --mixed_precision (ACCELERATE_MIXED_PRECISION): 'fp16'" in out.stderr
    for variable, flag in (("ACCELERATE_USE_FSDP", "--use_fsdp"), ("ACCELERATE_USE_DEEPSPEED", "--use_deepspeed")):
        out = run_cli(["run", str(toy_recipe), "--runs-root", str(runs)], {**cli_env, variable: "true"})
        assert out.returncode == 2 and f"accelerate launch {flag}: " in out.stderr and "--multi_gpu" in out.stderr
        assert "Traceback" not in out.stderr
    assert not runs.exists()


# -- compile ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["recipe", "launcher"])
def test_a_compiled_run_saves_plain_weights_and_evaluates(tmp_path: Path, toy_recipe: Path, cli_env, how: str) -> None:
    run = tmp_path / "compiled"
    args = ["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.epochs=1"]
    env = dict(cli_env)
    if how == "recipe":
        args += ["--set", "train.compile={backend = 'eager'}"]
    else:
        env["ACCELERATE_DYNAMO_BACKEND"] = "EAGER"  # what `accelerate launch --dynamo_backend eager` exports
    out = run_cli(args, env)
    assert out.returncode == 0, out.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["compile"]["backend"] == "eager" and info["settings_from"]["compile"] == how
    for weights in (run / "best" / "model.safetensors", sorted((run / "checkpoints").glob("step-*"))[-1] /
                    "model.safetensors"):
        assert not any(k.startswith("_orig_mod") for k in load_file(str(weights)))
    evaluated = run_cli(["evaluate", str(run), "--json"], env)
    assert evaluated.returncode == 0, evaluated.stderr
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert json.loads(evaluated.stdout)["accuracy"] == best["accuracy"]
    assert run_cli(["predict", str(run), ",".join(["0.5"] * 8)], env).returncode == 0
    assert (run / "report" / "report.md").exists()  # written by the run, from the best weights


# -- GPU-side options, on a CPU -------------------------------------------------------------------------------------
def test_data_on_device_and_optimizer_kernels_train_the_same(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    common = ["--set", "train.epochs=2", "--no-report", "--set", "optimizer={name = 'adamw', lr = 0.01}"]
    for name, extra in (("plain", []), ("on_device", ["--set", "data.on_device=true"]),
                        ("foreach", ["--set", "optimizer.foreach=true"]), ("fused", ["--set", "optimizer.fused=true"])):
        out = run_cli(["run", str(toy_recipe), "--run-dir", str(tmp_path / name), *common, *extra], cli_env)
        assert out.returncode == 0, out.stderr
    assert same_weights(tmp_path / "plain", tmp_path / "on_device")  # the same batches, cut on the device
    plain = final_weights(tmp_path / "plain")
    for kernel in ("foreach", "fused"):  # other kernels of the same update: equal up to rounding
        other = final_weights(tmp_path / kernel)
        assert all(torch.allclose(plain[k], other[k], atol=1e-5) for k in plain), kernel
    both = run_cli(["run", str(toy_recipe), "--runs-root", str(tmp_path / "runs"), "--set",
                    "optimizer={name = 'adam', fused = true, foreach = true}"], cli_env)
    assert both.returncode == 2 and "optimizer.fused and optimizer.foreach: choose one" in both.stderr
    assert not (tmp_path / "runs").exists()


def test_on_device_needs_tensor_datasets(plugin_site) -> None:
    from deepcourse.errors import RecipeError
    from deepcourse.recipe.load import load_recipe
    from deepcourse.task import DataBundle
    from deepcourse.training.build import place_data

    recipe = load_recipe(data={"name": "x", "task": {"name": "toy-classification"}, "model": {"name": "toy_mlp"},
                               "data": {"name": "toy_blobs", "on_device": True}})
    with pytest.raises(RecipeError, match="data.on_device: dataset 'toy_blobs' keeps its 'train' split as list"):
        place_data(recipe, DataBundle({"train": [1, 2, 3]}), torch.device("cpu"))


def test_sweep_jobs_each_get_a_gpu_of_their_own(tmp_path: Path, toy_recipe: Path, plugin_site, monkeypatch) -> None:
    """`deepcourse sweep -j 2` on a machine with GPUs 2 and 5: every run's environment names one of them, and two
    runs at a time never share one (the runs themselves are stand-ins that record what they were given)."""
    from deepcourse.errors import UserError
    from deepcourse.studies import processes as devices
    from deepcourse.studies import study, sweep

    seen: list[tuple[str | None, float, float]] = []

    class Recorded:
        def __init__(self, cmd: object, stdout: object, stderr: object, env: dict[str, str]) -> None:
            self.gpu, self.start, self.returncode = env.get("CUDA_VISIBLE_DEVICES"), time.monotonic(), None
            self.pid = 4_194_305  # above Linux's largest pid_max: no process has it

        def wait(self, timeout: float | None = None) -> int:
            time.sleep(0.3)
            self.returncode = 1
            seen.append((self.gpu, self.start, time.monotonic()))
            return 1

        def poll(self) -> int | None:
            return self.returncode

    monkeypatch.setattr(study.subprocess, "Popen", Recorded)
    monkeypatch.setattr(sweep, "visible_gpus", lambda: ["2", "5"])
    with pytest.raises(UserError, match="6 of 6 sweep runs failed"):
        sweep.sweep(toy_recipe, ["model.hidden=4,8,16", "model.dropout=0,0.5"], jobs=2, runs_root=tmp_path,
                    echo=lambda line: None)
    assert len(seen) == 6 and sorted({gpu for gpu, _, _ in seen}) == ["2", "5"]
    for gpu, start, end in seen:  # two runs on one GPU never overlap
        assert not any(g == gpu and s < end and start < e and (s, e) != (start, end) for g, s, e in seen)
    assert devices.DeviceSlots(3, []).free.get() is None  # no GPUs: the environment is left as it is


# -- trackers -----------------------------------------------------------------------------------------------------
def test_tensorboard_and_mlflow_get_the_metrics_and_the_recipe(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    runs = tmp_path / "runs"
    env = {k: v for k, v in cli_env.items() if not k.startswith("MLFLOW_")}
    out = run_cli(["run", str(toy_recipe), "--runs-root", str(runs),
                   "--set", "train.trackers=['tensorboard', 'mlflow']", "--set", "train.checkpoint_every=4",
                   "--set", "train.callbacks=[{name = 'interrupt_at', step = 13}]"], env)
    assert out.returncode == 130, out.stderr
    run = next((runs / "toy").iterdir())
    resumed = run_cli(["run", "--resume", str(run), "--set", "train.callbacks=[]"], env)
    assert resumed.returncode == 0, resumed.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in (run / "trackers").rglob("events.out.tfevents.*")]
    tags = {t for e in events for t in e.Tags()["scalars"]}
    assert {"train/loss", "train/accuracy", "train/grad_norm", "train/lr", "validation/accuracy"} <= tags
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("toy")
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 1  # the resumed run continued the same MLflow run
    logged = found[0]
    assert logged.data.params["optimizer.lr"] == "0.05" and logged.data.params["model.hidden"] == "32"
    history = client.get_metric_history(logged.info.run_id, "validation/accuracy")
    assert sorted(h.step for h in history)[-1] == json.loads((run / "summary.json").read_text())["steps"]
    assert json.loads((run / "trackers.json").read_text())["mlflow_run_id"] == logged.info.run_id


def test_training_metrics_and_gradient_norm_are_logged_and_plotted(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "r"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.clip_grad_norm=0.5"], cli_env)
    assert out.returncode == 0, out.stderr
    logged = rows(run)
    steps = [r for r in logged if r["split"] == "train" and r["scope"] == "step"]
    assert all(0 <= r["accuracy"] <= 1 and r["grad_norm"] > 0 for r in steps)
    epochs = [r for r in logged if r["split"] == "train" and r["scope"] == "epoch"]
    assert len(epochs) == 3 and all("accuracy" in r for r in epochs)
    assert steps[-1]["accuracy"] == epochs[-1]["accuracy"]  # the last step's running value is the epoch's
    md = (run / "report" / "report.md").read_text()
    assert "](grad_norm.png)" in md and "Training (over each epoch's batches, as trained) and validation accuracy" in md


# -- stops and checkpoints with several processes -------------------------------------------------------------------
@pytest.fixture(scope="module")
def whole_ddp(tmp_path_factory, cli_env) -> Path:
    """An uninterrupted two-process run, the reference for the interrupted ones."""
    from core_support import TOY_RECIPE

    folder = tmp_path_factory.mktemp("ddp")
    (folder / "toy.toml").write_text(TOY_RECIPE)
    out = launch(["run", str(folder / "toy.toml"), "--run-dir", str(folder / "whole"), "--no-report"], cli_env)
    assert out.returncode == 0, out.stderr
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("rank, signal_name, code", [(1, "SIGINT", 130), (-1, "SIGTERM", 143)])
def test_a_signal_during_evaluation_stops_every_process_and_resumes_exactly(whole_ddp: Path, cli_env, rank: int,
                                                                           signal_name: str, code: int) -> None:
    run = whole_ddp / f"cut-{signal_name}"
    start = time.monotonic()
    cut = launch(["run", str(whole_ddp / "toy.toml"), "--run-dir", str(run), "--no-report", "--set",
                  f"train.callbacks=[{{name = 'signal_during_eval', rank = {rank}, epoch = 2, signal_name = "
                  f"'{signal_name}'}}]"], cli_env, port=29531 if rank == 1 else 29532)
    assert time.monotonic() - start < 120 and cut.returncode != 0
    assert f"stopped by {signal_name}" in cut.stderr and f"exitcode  : {code}" in cut.stderr
    # stopped inside epoch 2's evaluation, after its 10 training steps: the checkpoint holds them, no evaluation yet
    latest = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert latest.name == "step-000000010"
    assert [r["epoch"] for r in rows(run) if r["split"] == "validation"] == [1]
    resumed = launch(["run", "--resume", str(run), "--set", "train.callbacks=[]"], cli_env,
                     port=29533 if rank == 1 else 29534)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(whole_ddp / "whole", run)
    assert rows(whole_ddp / "whole") == rows(run)


@pytest.mark.slow
def test_ctrl_c_to_the_launcher_during_evaluation_saves_and_resumes(whole_ddp: Path, cli_env) -> None:
    """What a user does: Ctrl-C in the terminal of `accelerate launch ... deepcourse run`, while it evaluates."""
    run, marker = whole_ddp / "cut-launcher", whole_ddp / "evaluating"
    launcher = launch(["run", str(whole_ddp / "toy.toml"), "--run-dir", str(run), "--no-report", "--set",
                       f"train.callbacks=[{{name = 'slow_eval', marker = '{marker}', seconds = 0.3}}]"], cli_env,
                      port=29535, popen=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), launcher.communicate()[1]
    os.killpg(launcher.pid, signal.SIGINT)  # the terminal sends SIGINT to the launcher's process group
    _, err = launcher.communicate(timeout=120)
    assert err.count("stopped by SIGINT; state saved in") == 2, err  # both workers saved, then exited 130
    assert sorted((run / "checkpoints").glob("step-*"))[-1].name == "step-000000005"
    resumed = launch(["run", "--resume", str(run), "--set", "train.callbacks=[]"], cli_env, port=29536)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(whole_ddp / "whole", run)


@pytest.mark.slow
def test_two_nodes_without_a_shared_filesystem_resume_exactly(whole_ddp: Path, cli_env) -> None:
    """`torchrun --nnodes 2` on this machine, each node in a folder of its own: only node 0 holds the run."""
    nodes = [whole_ddp / "node0", whole_ddp / "node1"]
    for node in nodes:
        node.mkdir()
        (node / "toy.toml").write_text((whole_ddp / "toy.toml").read_text())

    def torchrun(port: int, *args: str) -> list[subprocess.CompletedProcess[str]]:
        env = {**cli_env, "CUDA_VISIBLE_DEVICES": ""}
        procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                   "--nproc_per_node", "1", "--node_rank", str(rank), "--master_addr", "127.0.0.1",
                                   "--master_port", str(port), "-m", "deepcourse", *args], cwd=node, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for rank, node in enumerate(nodes)]
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]

    cut = torchrun(29541, "run", "toy.toml", "--run-dir", "run", "--no-report", "--set", "train.checkpoint_every=4",
                   "--set", "train.callbacks=[{name = 'interrupt_at', step = 7}]")
    assert all(c.returncode != 0 for c in cut) and "stopped by SIGINT" in cut[0].stderr
    assert (nodes[0] / "run" / "checkpoints" / "step-000000010").is_dir()
    assert not (nodes[1] / "run").exists()  # node 1 wrote nothing: it has no share of the run directory
    resumed = torchrun(29542, "run", "--resume", "run", "--set", "train.callbacks=[]")
    assert all(r.returncode == 0 for r in resumed), resumed[0].stderr + resumed[1].stderr
    assert not (nodes[1] / "run").exists()
    assert same_weights(whole_ddp / "whole", nodes[0] / "run")


def test_gpu_switches_reach_torch(plugin_site) -> None:
    """train.tf32 and train.cudnn_benchmark set torch's own switches (they act only on NVIDIA GPUs)."""
    from deepcourse.recipe.load import load_recipe
    from deepcourse.training.accelerator import apply_gpu_flags

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    base = {"name": "x", "task": {"name": "toy-classification"}, "model": {"name": "toy_mlp"},
            "data": {"name": "toy_blobs"}}
    try:
        apply_gpu_flags(load_recipe(data={**base, "train": {"tf32": True, "cudnn_benchmark": True}}))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
        apply_gpu_flags(load_recipe(data={**base, "train": {"tf32": False}}))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before


def test_weights_and_biases_offline(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    pytest.importorskip("wandb")
    env = {**cli_env, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(tmp_path / "r"), "--set", "train.trackers=['wandb']",
                   "--set", "train.epochs=1", "--no-report"], env)
    assert out.returncode == 0, out.stderr
    assert list(tmp_path.rglob("*.wandb"))


def test_the_tracker_list_is_accelerates() -> None:
    """train.trackers and train.compile's backends name what Accelerate supports, no more, no less."""
    import typing

    from accelerate.utils import DynamoBackend, LoggerType

    from deepcourse.recipe.schema import CompileBackend, Tracker

    assert set(typing.get_args(Tracker)) == {t.value for t in LoggerType} - {"all"}
    assert set(typing.get_args(CompileBackend)) == {b.value.lower() for b in DynamoBackend} - {"no"}


class BlockingTracker:
    """A tracker whose `log` waits until the test releases it (a slow MLflow store), and fails at step `fail_at`."""

    name, requires_logging_directory = "blocking", False

    def __init__(self, fail_at: int | None = None) -> None:
        import threading

        self.release, self.called, self.fail_at = threading.Event(), threading.Event(), fail_at
        self.logged: list[tuple[int, dict]] = []
        self.finished = False

    @property
    def tracker(self) -> BlockingTracker:
        return self

    def start(self) -> None: ...

    def store_init_configuration(self, values: dict) -> None: ...

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.called.set()
        assert self.release.wait(timeout=60), "never released: the training loop waited for the tracker"
        if step == self.fail_at:
            raise RuntimeError("tracker down")
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


def tracked_log(tmp_path: Path, tracker: BlockingTracker):
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    from deepcourse.training.tracking import RunLog

    wrapped = type("Blocking", (BlockingTracker, GeneralTracker), {})  # Accelerate takes GeneralTracker instances
    tracker.__class__ = wrapped
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("toy")
    return RunLog(tmp_path / "metrics.jsonl", accelerator)


def test_a_slow_tracker_does_not_hold_up_the_training_loop(tmp_path: Path) -> None:
    tracker = BlockingTracker()
    log = tracked_log(tmp_path, tracker)
    for step in (2, 4, 6):
        log.write({"split": "train", "scope": "step", "step": step, "loss": 1.0 / step})
    assert tracker.called.wait(timeout=60) and tracker.logged == []  # the tracker is still busy with step 2 ...
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # ... and the record is written
    tracker.release.set()
    log.close()
    assert tracker.logged == [(s, {"train/loss": 1.0 / s}) for s in (2, 4, 6)] and tracker.finished


def test_a_tracker_error_is_raised_in_the_training_loop(tmp_path: Path, caplog) -> None:
    import logging

    tracker = BlockingTracker(fail_at=2)
    tracker.release.set()
    log = tracked_log(tmp_path, tracker)
    log.write({"split": "train", "step": 2, "loss": 0.5})
    log.sender.wait()
    with pytest.raises(RuntimeError, match="tracker down") as raised:
        log.write({"split": "train", "step": 4, "loss": 0.4})  # the next log call
    assert "failed to log step 2" in "".join(raised.value.__notes__)
    log.close()
    # at the end: raised by close(), unless another exception (a stop) is already ending the run: then logged
    log = tracked_log(tmp_path, BlockingTracker(fail_at=6))
    log.accelerator.trackers[0].release.set()
    log.write({"split": "train", "step": 6, "loss": 0.3})
    with pytest.raises(RuntimeError, match="tracker down"):
        log.close()
    log = tracked_log(tmp_path, BlockingTracker(fail_at=8))
    log.accelerator.trackers[0].release.set()
    log.write({"split": "train", "step": 8, "loss": 0.2})
    with caplog.at_level(logging.ERROR), pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt
        finally:
            log.close()
    assert "the trackers failed" in caplog.text and "tracker down" in caplog.text
