"""The GPU check: `recipes/cifar_resnet.toml` on one GPU, each speed lever measured in one prepared command.

Prints, for ResNet-18 (CIFAR stem) on one CIFAR-10 training shard (25,000 images: 20,000 to train on, 5,000 held
out and never selected on): images/s and epoch time in fp32 and bf16, eager and compiled (torch.compile, inductor),
with the data on the GPU (`data.on_device`) and through pinned host memory; the host time a step spends waiting for
its batch; peak GPU memory; and the held-out accuracy of a short bf16 run, evaluated on the last weights. Fits in
about 8 minutes on one H100/H200; the table goes to stdout and, with --out, to a JSON file.

    python benchmarks/gpu_check.py --prepare                 # copy one shard from $DEEPCOURSE_DATA to .gpu_data/
    python benchmarks/gpu_check.py --data .gpu_data --out gpu_check.json
    python benchmarks/gpu_check.py --data DIR --smoke        # seconds on a CPU: every leg runs, numbers mean nothing

The shard travels with the working tree (.gpu_data/ is git-ignored; the device tool carries it, 58 MB).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import deepcourse
from deepcourse.api import CALLBACKS, Callback, load_plugins

SHARD = "train-00000-of-00002.parquet"
WAITS: list[float] = []


@CALLBACKS.register("gpu_check_input_wait")
class InputWait(Callback):
    """Host seconds from the end of one optimizer step to the start of the next training step: the time the loop
    spends getting its next batch (fetch, collate, copy to the GPU), after a warm-up of `skip` steps."""

    def __init__(self, skip: int = 5) -> None:
        self.skip, self.last = skip, None

    def on_train_start(self, ctx: Any) -> None:
        original = ctx.task.training_step

        def training_step(model: Any, batch: Any) -> Any:
            if self.last is not None and ctx.state.global_step > self.skip:
                WAITS.append(time.perf_counter() - self.last)
            return original(model, batch)

        ctx.task.training_step = training_step

    def on_step_end(self, ctx: Any, loss: float | None) -> None:
        self.last = time.perf_counter()


def prepare(target: Path) -> None:
    source = Path(os.environ.get("DEEPCOURSE_DATA", "../shared/data")) / "cifar10" / SHARD
    if not source.is_file():
        raise SystemExit(f"{source}: not found; set DEEPCOURSE_DATA to the folder holding cifar10/")
    (target / "cifar10").mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target / "cifar10" / SHARD)
    print(f"copied {source} ({source.stat().st_size / 1e6:.0f} MB) to {target / 'cifar10'}")


def leg(name: str, data: Path, runs: Path, epochs: int, smoke: bool, *overrides: str) -> dict[str, Any]:
    """One `deepcourse.run` of cifar_resnet; its throughput, epoch times, input wait and peak memory."""
    WAITS.clear()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = [f"data.data_dir='{data / 'cifar10'}'", "data.val_split=0.2", f"train.epochs={epochs}",
            "train.progress=false", "train.log_every=10", "eval.every=1000",
            "train.callbacks=[{name = 'gpu_check_input_wait'}]"]
    if smoke:
        base += ["data.train_samples=48", "data.eval_samples=32", "data.batch_size=16",
                 "data.eval_batch_size=64"]
    start = time.perf_counter()
    result = deepcourse.run("cifar_resnet", *base, *overrides, runs_root=runs / name, report=False)
    seconds = time.perf_counter() - start
    epochs_s = [e["seconds"] for e in result.history if e["split"] == "train" and e["scope"] == "epoch"]
    images = [e["samples_per_s"] for e in result.history if e["split"] == "train" and e["scope"] == "step"]
    steady = images[len(images) // 3:] or images  # after compilation and cuDNN's first choices
    step_s = statistics.median(epochs_s[-1:]) / max(1, len([e for e in result.history if e["split"] == "train" and
                                                              e["scope"] == "step"]) // max(1, epochs))
    return {"leg": name, "epochs": epochs, "images_per_s": round(statistics.median(steady), 1) if steady else None,
            "first_epoch_s": round(epochs_s[0], 2) if epochs_s else None,
            "last_epoch_s": round(epochs_s[-1], 2) if epochs_s else None,
            "input_wait_ms": round(1e3 * statistics.median(WAITS), 3) if WAITS else None,
            "step_s": round(step_s, 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "wall_s": round(seconds, 1), "run_dir": str(result.run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="copy one CIFAR-10 shard into --data and stop")
    parser.add_argument("--data", type=Path, default=Path(".gpu_data"))
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="a few seconds on a CPU: tiny data, every leg")
    parser.add_argument("--accuracy-epochs", type=int, default=15)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.data)
        return
    if not (args.data / "cifar10" / SHARD).is_file():
        raise SystemExit(f"{args.data / 'cifar10' / SHARD}: not found; run with --prepare first")
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("no GPU here: this check is for a GPU (use --smoke to run every leg on a CPU)")
    load_plugins()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    smoke = args.smoke
    epochs = 1 if smoke else 3
    compiled = "train.compile={backend = 'eager'}" if smoke else "train.compile=true"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(scratch)
        for name, extra in (("fp32 eager", ["train.mixed_precision='no'"]),
                            ("bf16 eager", ["train.mixed_precision='bf16'"]),
                            ("bf16 compiled", ["train.mixed_precision='bf16'", compiled]),
                            ("bf16 eager, data on the GPU", ["train.mixed_precision='bf16'", "data.on_device=true"])):
            results.append(leg(name, args.data, runs, epochs, smoke, *extra))
            print(json.dumps(results[-1]), flush=True)
        accuracy_epochs = 1 if smoke else args.accuracy_epochs
        final = leg("bf16, accuracy run", args.data, runs, accuracy_epochs, smoke, "train.mixed_precision='bf16'",
                    "data.on_device=true", f"train.epochs={accuracy_epochs}")
        held_out = deepcourse.evaluate(final["run_dir"], checkpoint="latest")  # the last weights: nothing selected
        final["held_out_accuracy"] = round(held_out["accuracy"], 4)
        final["held_out_images"] = int(held_out["num_samples"])
        results.append(final)
    report = {"device": device, "torch": torch.__version__, "deepcourse": deepcourse.__version__, "smoke": smoke,
              "legs": results}
    print(f"\ncifar_resnet (ResNet-18, CIFAR stem) on {device}, torch {torch.__version__}"
          f"{' (SMOKE: tiny data, numbers mean nothing)' if smoke else ''}")
    print("| leg | images/s | first epoch (s) | last epoch (s) | input wait (ms/step) | peak memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['leg']} | {r['images_per_s']} | {r['first_epoch_s']} | {r['last_epoch_s']} | "
              f"{r['input_wait_ms']} | {r['peak_memory_gib']} |")
    print(f"\nheld-out accuracy after {accuracy_epochs} epochs (last weights, {final['held_out_images']} images never "
          f"trained or selected on): {final['held_out_accuracy']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
