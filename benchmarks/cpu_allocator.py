"""How much does `train.keep_freed_memory` (deepcourse.training.accelerator) save on a CPU training step?

Runs the same deepcourse training (LeNet-5 on random 32x32 RGB images, as in loop_overhead.py) in fresh child
processes, alternately with `train.keep_freed_memory = true` and `false` (glibc's defaults), and prints each
child's median step time, its minor page faults per step, and the ratio of the medians. Each setting needs its own
process: glibc's thresholds cannot be put back once changed.

    python benchmarks/cpu_allocator.py [--pairs 4] [--steps 30] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def child(keep: bool, steps: int, batch_size: int) -> None:
    sys.path.insert(0, str(HERE))
    import loop_overhead as lo  # registers the benchmark task, dataset and model

    from deepcourse.recipe.load import load_recipe
    from deepcourse.registry import CALLBACKS
    from deepcourse.training.callbacks import Callback
    from deepcourse.training.loop import fit

    times: list[float] = []
    faults: list[int] = []

    @CALLBACKS.register("bench_step_faults", override=True)
    class StepFaults(Callback):
        def on_train_start(self, ctx: Any) -> None:
            self.t, self.f = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

        def on_step_end(self, ctx: Any, loss: float | None) -> None:
            t, f = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times.append(t - self.t)
            faults.append(f - self.f)
            self.t, self.f = t, f

    recipe = load_recipe(data={
        "name": "cpu_allocator", "seed": 0, "task": {"name": "bench-classification"},
        "data": {"name": "bench_random_images", "batch_size": batch_size}, "model": {"name": "bench_cnn"},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "train": {"epochs": 1, "max_steps": steps, "progress": False, "keep_freed_memory": keep,
                  "callbacks": [{"name": "bench_step_faults"}]},
    })
    assert lo.N_IMAGES >= steps * batch_size
    with tempfile.TemporaryDirectory() as tmp:
        fit(recipe, run_dir=Path(tmp) / "run")
    warm = 5
    print(json.dumps({"median_s": statistics.median(times[warm:]), "faults": statistics.median(faults[warm:])}))


def run_child(keep: bool, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", "on" if keep else "off", "--steps", str(args.steps),
           "--batch-size", str(args.batch_size)]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child == "on", args.steps, args.batch_size)
        return
    on: list[float] = []
    off: list[float] = []
    for i in range(args.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)  # alternate, so drift favours neither
        for keep in order:
            r = run_child(keep, args)
            (on if keep else off).append(r["median_s"])
            print(f"pair {i + 1}: keep_freed_memory={str(keep).lower():5}  {r['median_s'] * 1e3:6.2f} ms/step  "
                  f"{r['faults']:6.0f} page faults/step", flush=True)
    print(f"median step time: keep_freed_memory=true {statistics.median(on) * 1e3:.2f} ms, "
          f"false (glibc defaults) {statistics.median(off) * 1e3:.2f} ms")
    print(f"speed-up: {statistics.median(off) / statistics.median(on):.2f}x")


if __name__ == "__main__":
    main()
