"""The GPU check: `recipes/cifar_resnet.toml` on one GPU, every speed setting measured in one prepared command.

On a GPU machine without network, with this checkout and the folder that `--prepare` fills here (.gpu_data/: one
CIFAR-10 training shard of 25,000 images, of which 20,000 are trained on and 5,000 held out for validation, and the
wheels the machine may lack), one command installs offline (or uses what is installed), then measures, leg by leg:

- speed, side by side in this process: a hand-written PyTorch loop (gpu_check_loop.py) and `deepcourse run` (its
  Python form, `deepcourse.run`) train the same network with the same settings; for each, images/s and seconds per
  optimizer step over timed steps between two device synchronizations, and their ratio. One leg has every speed
  setting on (bf16 autocast, channels_last, fused SGD, TF32, cudnn.benchmark, data.on_device); each other leg turns
  one off (fp32 with and without TF32, fp16 with its gradient scaler, ...) or torch.compile on;
- host syncs per steady step by file:line, from torch's sync debug mode, for both loops;
- torch.compile's recompilations (and graphs, graph breaks) in the compiled leg;
- time to 90% and 94% validation accuracy of `cifar_resnet` (its 40-epoch schedule, stopped at 94% or when its
  time is spent), and of `cifar_fast90` (airbench94, recipes/cifar_fast90.toml, as shipped; leg `cifar-fast`).

After every leg it rewrites report.json and report.md in --out, so a run cut off by a time limit keeps the legs done.
Legs that would not fit in --budget-s are skipped and named; a failing leg is reported and the others still run
(exit status 1 then).

    python benchmarks/gpu_check.py --prepare --wheels-python 3.12     # here, with network: fills .gpu_data/
    python3 benchmarks/gpu_check.py --out gpu_check_report            # there: the whole check, offline
    python benchmarks/gpu_check.py --data DIR --smoke --out DIR2      # a CPU, seconds: every leg that can run
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gpu_check_setup as setup
import torch
from gpu_check_loop import CompileLog, Reference, Settings, SyncLog, Window, hand_written
from gpu_check_report import markdown

RECIPE = "cifar_resnet"
FAST_RECIPE = setup.REPO / "recipes" / "cifar_fast90.toml"  # airbench94: 94% on clean CIFAR-10 (aim: < 10 s, H100)
TARGETS = (0.90, 0.94)
BASE = Settings()
SPEED: list[tuple[str, str, Settings]] = [
    ("base", "all on: bf16, channels_last, fused SGD, TF32, cudnn.benchmark, data on the GPU", BASE),
    ("fp32", "fp32 (TF32 on)", replace(BASE, precision="fp32")),
    ("fp32-no-tf32", "fp32, TF32 off", replace(BASE, precision="fp32", tf32=False)),
    ("fp16", "fp16 autocast with a gradient scaler", replace(BASE, precision="fp16")),
    ("no-channels-last", "channels_last off (NCHW)", replace(BASE, channels_last=False)),
    ("no-fused", "fused optimizer off (torch's default: foreach)", replace(BASE, fused=False)),
    ("no-cudnn-benchmark", "cudnn.benchmark off", replace(BASE, cudnn_benchmark=False)),
    ("host-data", "data.on_device off: batches from pinned host memory", replace(BASE, on_device=False)),
    ("compiled", "torch.compile on", replace(BASE, compile=True)),
]
CUDA_ONLY = {"fp32-no-tf32": "TF32 is an NVIDIA GPU switch: nothing to turn off on a CPU",
             "fp16": "fp16 autocast needs a CUDA GPU (deepcourse refuses it on a CPU)",
             "no-cudnn-benchmark": "cuDNN is CUDA's: nothing to turn off on a CPU"}
#: seconds a leg needs at least on a GPU (a guess, not a measurement): a leg that would not fit is skipped
NEEDS = {"compiled": 150.0, "accuracy": 60.0, "cifar-fast": 45.0}
SMOKE_MODEL = "{name = 'simple_cnn', channels = [8, 16], activation = 'relu', norm = 'batch'}"
ACTIVE: dict[str, Any] = {}  # what the registered callbacks report to: the leg's Window, or its Accuracy


class Accuracy:
    """Validation accuracy after every evaluation of a run, against the time the run has taken; stops the run (at the
    end of that epoch) once the highest target is reached or its time is spent."""

    def __init__(self, budget_s: float, on_update: Any) -> None:
        self.budget_s, self.on_update = budget_s, on_update
        self.evaluations: list[dict[str, Any]] = []
        self.stopped = "the recipe's epochs done"

    def evaluated(self, ctx: Any, metrics: dict[str, Any]) -> None:
        accuracy = float(metrics["accuracy"])
        self.evaluations.append({"epoch": ctx.state.epoch + 1, "step": ctx.state.global_step,
                                 "wall_s": round(ctx.elapsed(), 1), "accuracy": round(accuracy, 4)})
        if accuracy >= max(TARGETS):
            ctx.state.done, self.stopped = True, f"reached {max(TARGETS):.0%}"
        elif ctx.elapsed() >= self.budget_s:
            ctx.state.done, self.stopped = True, f"its time ({self.budget_s:.0f} s) was spent"
        self.on_update()

    def result(self, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The evaluations (with the training seconds the loop logged, once the run is over) and the first one to
        reach each target."""
        train_s, total = {}, 0.0
        for e in history or []:
            if e.get("split") == "train" and e.get("scope") == "epoch":
                total += e["seconds"]
                train_s[e["epoch"]] = round(total, 1)
        for e in self.evaluations:
            if e["epoch"] in train_s:
                e["train_s"] = train_s[e["epoch"]]
        reached = {f"{t:.0%}": next((e for e in self.evaluations if e["accuracy"] >= t), None) for t in TARGETS}
        best = max((e["accuracy"] for e in self.evaluations), default=None)
        return {"time_to": reached, "best_accuracy": best, "stopped": self.stopped, "evaluations": self.evaluations}


def register_callbacks() -> None:
    from deepcourse.api import CALLBACKS, Callback

    @CALLBACKS.register("gpu_check_window")
    class WindowSteps(Callback):
        """Hands every optimizer step of `deepcourse run` to the GPU check's window: the clock and the probes."""

        def on_train_start(self, ctx: Any) -> None:
            ACTIVE["window"].start()

        def on_step_end(self, ctx: Any, loss: float | None) -> None:
            ACTIVE["window"].after_step(ctx.state.global_step)

    @CALLBACKS.register("gpu_check_accuracy")
    class AccuracyWatch(Callback):
        """Hands every evaluation to the GPU check's time-to-accuracy record."""

        def on_evaluate(self, ctx: Any, metrics: dict[str, Any]) -> None:
            ACTIVE["accuracy"].evaluated(ctx, metrics)


class Check:
    """The legs, in order, each written to the report as soon as it is done."""

    def __init__(self, args: argparse.Namespace, started: float, install: dict[str, Any]) -> None:
        import deepcourse
        import deepcourse_vision

        self.args, self.started, self.smoke = args, started, args.smoke
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backend = "eager" if self.smoke else "inductor"
        self.windows = (2, 2, 3, 2) if self.smoke else (16, 20, 40, 20)  # warm-up, probe, timed steps; log_every
        self.roots = [str(Path(m.__file__).parent) for m in (deepcourse, deepcourse_vision)]
        self.roots.append(str(Path(__file__).parent))  # this check's own lines (the hand-written loop)
        self.ref: Reference | None = None
        cpu = f"CPU ({platform.processor() or platform.machine()})"
        name = torch.cuda.get_device_name() if self.device.type == "cuda" else cpu
        self.report: dict[str, Any] = {
            "check": "benchmarks/gpu_check.py", "smoke": self.smoke, "device": name, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "deepcourse": deepcourse.__version__,
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "budget_s": args.budget_s,
            "install": install, "steps": dict(zip(("warmup", "probe", "timed", "log_every"), self.windows)),
            "legs": [{"id": i, "label": label, "kind": "speed", "status": "pending", "settings": s.as_dict()}
                     for i, label, s in SPEED]
            + [{"id": "accuracy", "label": f"{RECIPE}: time to 90% / 94%", "kind": "accuracy", "status": "pending"},
               {"id": "cifar-fast", "label": "cifar_fast90: time to 90% / 94%", "kind": "accuracy",
                "status": "pending"}]}

    # -- the plan -------------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.write()
        plan = [(i, lambda s=s: self.speed(s)) for i, _, s in SPEED]
        plan += [("accuracy", self.accuracy), ("cifar-fast", self.cifar_fast)]
        for leg_id, body in plan:
            entry = self.leg(leg_id)
            reason = self.skip_reason(leg_id)
            if reason:
                entry.update(status="skipped", reason=reason)
            else:
                entry["status"], began = "running", time.monotonic()
                self.write()  # cut off during this leg, the report says which one was running
                try:
                    entry.update(body())
                    entry["status"] = "failed" if entry.get("problem") else "ok"
                except Exception as exc:  # noqa: BLE001 - one failing leg is reported; the others still run
                    traceback.print_exc()
                    entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
                entry["seconds"] = round(time.monotonic() - began, 1)
                self.release()
            self.write()
            why = f" ({entry['reason']})" if "reason" in entry else ""
            print(f"gpu_check: {leg_id}: {entry['status']}{why}; report written to {self.args.out}", flush=True)
        print(markdown(self.report))
        return 1 if any(e["status"] == "failed" for e in self.report["legs"]) else 0

    def leg(self, leg_id: str) -> dict[str, Any]:
        return next(e for e in self.report["legs"] if e["id"] == leg_id)

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def skip_reason(self, leg_id: str) -> str | None:
        if self.args.only and leg_id not in self.args.only:
            return "not asked for (--only)"
        if self.device.type != "cuda" and leg_id in CUDA_ONLY:
            return CUDA_ONLY[leg_id]
        if leg_id == "cifar-fast" and not FAST_RECIPE.is_file():
            return f"{FAST_RECIPE.relative_to(setup.REPO)} does not exist in this checkout"
        need = 0.0 if self.smoke else NEEDS.get(leg_id, 30.0)
        if self.left() < need:
            return f"out of time: {self.left():.0f} s of the budget left, this leg needs about {need:.0f} s"
        return None

    def release(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- recipes and overrides ----------------------------------------------------------------------------------------
    def data(self, tiny: bool = True) -> list[str]:
        """Every run: the shard, 5,000 of its images held out for validation (the same for the same seed); in smoke
        mode (`tiny`) a small network on small batches."""
        small = [f"model={SMOKE_MODEL}", "data.batch_size=16", "data.eval_batch_size=64", "data.eval_samples=32"]
        return [f"data.data_dir='{self.args.data / 'cifar10'}'", "data.val_split=0.2", "train.progress=false",
                *(small if self.smoke and tiny else [])]

    def reference(self) -> Reference:
        """The hand-written loop's data and choices, read from the recipe that `deepcourse run` trains."""
        if self.ref is None:
            from deepcourse.api import MODELS, build_task, call_builder, load_recipe

            began = time.perf_counter()
            recipe = load_recipe(RECIPE, self.data())
            bundle = build_task(recipe).setup_data(recipe.data, splits=("train",), seed=recipe.seed)
            arrays, facts = bundle.splits["train"].arrays, dict(bundle.facts)
            if recipe.optimizer.name != "sgd":
                raise RuntimeError(f"{RECIPE}: the hand-written loop trains with SGD, the recipe with "
                                   f"{recipe.optimizer.name}")
            opts = recipe.optimizer.options
            self.ref = Reference(
                images=arrays["image"], labels=arrays["label"], mean=bundle.artifacts["mean"],
                std=bundle.artifacts["std"], batch_size=recipe.data.batch_size,
                build_model=lambda: call_builder(MODELS.get(recipe.model.name), recipe.model.options, loc="model",
                                                 provided=facts),
                optimizer={k: opts[k] for k in ("lr", "momentum", "nesterov", "weight_decay") if k in opts},
                pct_start=float(recipe.scheduler.options.get("pct_start", 0.25)),
                label_smoothing=float(recipe.task.options.get("label_smoothing", 0.0)))
            self.report["data"] = {"train_images": len(self.ref.labels), "batch_size": self.ref.batch_size,
                                   "decoded_or_read_s": round(time.perf_counter() - began, 1)}
        return self.ref

    # -- the legs -------------------------------------------------------------------------------------------------
    def window(self, settings: Settings) -> tuple[Window, CompileLog | None]:
        warmup, probe, timed, _ = self.windows
        compiles = CompileLog() if settings.compile else None
        return Window(warmup, probe, timed, self.device, SyncLog(self.device.type == "cuda", self.roots),
                      compiles), compiles

    def measured(self, settings: Settings, body: Any) -> dict[str, Any]:
        """One loop's run of a leg inside its window (and compile log), with the window's figures."""
        window, compiles = self.window(settings)
        ACTIVE["window"] = window
        if compiles is not None:
            compiles.start()
        try:
            extra = body(window)
        finally:
            window.syncs.stop()  # a failure inside the probe must not leave the debug mode on
            stats = compiles.stop() if compiles is not None else None
        return {**window.result(self.reference().batch_size), **extra, **({"compile": stats} if stats else {})}

    def speed(self, settings: Settings) -> dict[str, Any]:
        ref = self.reference()
        hand = self.measured(settings, lambda w: hand_written(ref, settings, w, self.device, self.backend))
        self.release()
        ours = self.measured(settings, lambda w: self.deepcourse_steps(settings, w))
        out = {"hand_written": hand, "deepcourse": ours, "ratio": round(ours["images_per_s"] / hand["images_per_s"], 3)}
        if settings.compile and not ours["compile"]["graphs"]:
            out["problem"] = "deepcourse run did not compile the model (torch.compile made no graph)"
        return out

    def deepcourse_steps(self, settings: Settings, window: Window) -> dict[str, Any]:
        import deepcourse

        log_every = self.windows[3]
        overrides = [*self.data(), "data.drop_last=true", "train.epochs=1", f"train.max_steps={window.total}",
                     f"train.log_every={log_every}", *([] if self.smoke else ["data.eval_samples=1000"]),
                     "train.callbacks=[{name = 'gpu_check_window'}]", *settings.overrides(self.backend)]
        with tempfile.TemporaryDirectory() as runs:
            result = deepcourse.run(RECIPE, *overrides, runs_root=runs, report=False)
        return {"steps": result.summary["steps"], "log_every": log_every}

    def accuracy(self) -> dict[str, Any]:
        """cifar_resnet as shipped, on the GPU switches that change no arithmetic's meaning; stopped at 94%."""
        extra = ["data.on_device=true", "optimizer.fused=true", "train.tf32=true", "train.cudnn_benchmark=true",
                 "data.drop_last=true", *(["train.epochs=2"] if self.smoke else [])]
        reserve = NEEDS["cifar-fast"] + 30 if FAST_RECIPE.is_file() else 0.0
        budget = min(self.args.accuracy_s, self.left() - reserve - 20)
        if budget < NEEDS["accuracy"] / 2:  # too little for both: cifar_fast90 will be skipped for lack of time
            budget = min(self.args.accuracy_s, self.left() - 20)
        return self.time_to_accuracy(RECIPE, extra, budget)

    # -- cifar_fast90 ----------------------------------------------------------------------------------------------
    # skip_reason skips this leg with a note if the recipe is missing (a checkout older than the fast recipes).
    def cifar_fast(self) -> dict[str, Any]:
        """Time to 90% / 94% of recipes/cifar_fast90.toml as it is (its own settings), on the same data and split."""
        smoke = ["train.epochs=1", "train.max_steps=2", "data.batch_size=16", "data.eval_samples=32"]
        return self.time_to_accuracy(str(FAST_RECIPE), smoke if self.smoke else [],
                                     min(self.args.fast_s, self.left() - 20), tiny_model=False)

    def time_to_accuracy(self, recipe: str, extra: list[str], budget_s: float,
                         tiny_model: bool = True) -> dict[str, Any]:
        import deepcourse

        entry = self.leg("accuracy" if recipe == RECIPE else "cifar-fast")
        watch = Accuracy(budget_s, lambda: (entry.update(watch.result()), self.write()))
        ACTIVE["accuracy"] = watch
        overrides = [*self.data(tiny_model), *extra, "train.callbacks=[{name = 'gpu_check_accuracy'}]"]
        entry.update(overrides=overrides, budget_s=round(budget_s))
        with tempfile.TemporaryDirectory() as runs:
            result = deepcourse.run(recipe, *overrides, runs_root=runs, report=False)
        return {**watch.result(result.history), "epochs": result.summary["epochs"]}

    def write(self) -> None:
        """report.json and report.md, each replaced whole: a run killed mid-write keeps the previous one."""
        self.report["elapsed_s"] = round(time.monotonic() - self.started, 1)
        out: Path = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("report.json", json.dumps(self.report, indent=1)), ("report.md", markdown(self.report))):
            tmp = out / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out / name)


def main() -> None:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="fill --data here (shard, wheels) and stop")
    parser.add_argument("--wheels-python", metavar="X.Y", help="with --prepare: also download the CARRIED wheels "
                                                               "for this Python (the GPU machine's)")
    parser.add_argument("--data", type=Path, default=Path(".gpu_data"), help="the folder holding cifar10/")
    parser.add_argument("--wheels", type=Path, help="wheels to install from when deepcourse is not installed "
                                                    "(default: DATA/wheels)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_report"), help="report.json and report.md")
    parser.add_argument("--budget-s", type=float, default=510.0, help="legs that would not fit are skipped")
    parser.add_argument("--accuracy-s", type=float, default=180.0, help="time for the cifar_resnet accuracy run")
    parser.add_argument("--fast-s", type=float, default=90.0, help="time for the cifar_fast90 accuracy run")
    parser.add_argument("--only", type=lambda s: s.split(","), help="comma-separated leg ids (base, fp32, ..., "
                                                                   "compiled, accuracy, cifar-fast)")
    parser.add_argument("--smoke", action="store_true", help="a CPU, seconds: tiny network, a few steps per leg")
    args = parser.parse_args()
    if args.prepare:
        setup.prepare(args.data, args.wheels_python)
        return
    if not (args.data / "cifar10" / setup.SHARD).is_file():
        raise SystemExit(f"{args.data / 'cifar10' / setup.SHARD}: not found; run with --prepare first")
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("no GPU here: this check is for a GPU (--smoke runs every leg a CPU can on tiny sizes)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    install = setup.install(args.wheels or args.data / "wheels")
    register_callbacks()
    sys.exit(Check(args, started, install).run())


if __name__ == "__main__":
    main()
