"""The fast CIFAR recipe through the engine against the same method in one hand-written file, on the same machine.

Runs, one after the other (never at once: they would share the cores), `deepcourse run recipes/cifar_fast90.toml`
with an evaluation after every epoch, and `benchmarks/cifar_airbench_loop.py` (same net, schedule, split and
whitening sample, for the same seed), then reads both logs and reports, for each, the training time (evaluation
excluded: the run's per-epoch training seconds, the loop's train_s) at which the held-out accuracy first reached 90%
and 92%, and the ratio deepcourse / loop. The issue's bar: a ratio <= 1.05 at 90%.

    python benchmarks/cifar_speed.py --seed 0 --out cifar_speed.json              # DEEPCOURSE_DATA must be set
    python benchmarks/cifar_speed.py --smoke --out /tmp/speed.json                  # a few steps, to try the wiring
    python benchmarks/cifar_speed.py --summarize cifar_speed_s0.json cifar_speed_s1.json cifar_speed_s2.json

`--summarize` reads the JSON of several seeds and prints the table docs/results.md shows: per side the held-out
accuracy after the last epoch and the training times (mean ± sample std over the seeds), and the ratios
deepcourse / loop seed by seed (the whole schedule, and the time to 90% where both reached it).

A smoke run trains on 2,048 images for a few steps and evaluates 500: its times say nothing about the method.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "cifar_fast90.toml"
LOOP = ROOT / "benchmarks" / "cifar_airbench_loop.py"
TARGETS = (0.90, 0.92)


def run_deepcourse(recipe: Path, seed: int, threads: int | None, smoke: bool,
                   work: Path) -> tuple[list[dict[str, Any]], str]:
    """Train the recipe with an evaluation after every epoch: (cumulative training seconds, accuracy) per epoch, and
    the precision the run computed in ("bf16" or "fp32"), which the loop is then given."""
    run_dir = work / "deepcourse_run"
    sets = [f"seed={seed}", "eval.every=1", "train.progress=false"]
    if threads:
        sets.append(f"train.threads={threads}")
    if smoke:
        sets += ["data.train_samples=2048", "data.eval_samples=500", "train.max_steps=4", "train.epochs=2"]
    command = [sys.executable, "-m", "deepcourse", "run", str(recipe), "--run-dir", str(run_dir), "--no-report"]
    for item in sets:
        command += ["--set", item]
    subprocess.run(command, check=True, cwd=ROOT)
    mixed = json.loads((run_dir / "run.json").read_text())["mixed_precision"]
    return epochs_of_run(run_dir / "metrics.jsonl"), "bf16" if mixed == "bf16" else "fp32"


def epochs_of_run(metrics: Path) -> list[dict[str, Any]]:
    """Per evaluated epoch: the training seconds so far (the sum of the epochs' own, which exclude evaluation) and
    the validation accuracy, from a run's metrics.jsonl."""
    trained, out = 0.0, []
    for line in metrics.read_text().splitlines():
        event = json.loads(line)
        if event.get("scope") != "epoch":
            continue
        if event.get("split") == "train":
            trained += float(event["seconds"])
        elif "accuracy" in event:
            out.append({"epoch": event["epoch"], "train_s": round(trained, 2), "accuracy": event["accuracy"]})
    return out


def run_loop(seed: int, threads: int | None, smoke: bool, work: Path, precision: str) -> list[dict[str, Any]]:
    out = work / "loop.json"
    command = [sys.executable, str(LOOP), "--seed", str(seed), "--out", str(out), "--precision", precision]
    if threads:
        command += ["--threads", str(threads)]
    if smoke:
        command += ["--limit", "2048", "--eval-limit", "500", "--epochs", "2"]
    subprocess.run(command, check=True, cwd=ROOT)
    return [{k: e[k] for k in ("epoch", "train_s", "accuracy")} for e in json.loads(out.read_text())["epochs"]]


def time_to(epochs: list[dict[str, Any]], target: float) -> float | None:
    """Training seconds at the first evaluation at or above `target` (None: never reached)."""
    return next((e["train_s"] for e in epochs if e["accuracy"] >= target), None)


def compare(engine: list[dict[str, Any]], loop: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for target in TARGETS:
        a, b = time_to(engine, target), time_to(loop, target)
        result[f"{target:.0%}"] = {"deepcourse_s": a, "loop_s": b,
                                   "ratio": round(a / b, 3) if a is not None and b else None}
    result["final_accuracy"] = {"deepcourse": engine[-1]["accuracy"] if engine else None,
                                "loop": loop[-1]["accuracy"] if loop else None}
    result["total_train_s"] = {"deepcourse": engine[-1]["train_s"] if engine else None,
                               "loop": loop[-1]["train_s"] if loop else None}
    return result


def summarize(paths: list[Path]) -> dict[str, Any]:
    """The seeds' comparisons as one table: mean ± std per side, and the ratios pair by pair."""
    import statistics

    runs = [json.loads(path.read_text()) for path in paths]
    if len({run["seed"] for run in runs}) != len(runs) or any(run.get("smoke") for run in runs):
        raise SystemExit("--summarize: give one full (not --smoke) result per seed")

    def spread(values: list[float | None]) -> str:
        got = [v for v in values if v is not None]
        if not got:
            return "never"
        std = statistics.stdev(got) if len(got) > 1 else 0.0
        missing = f", {len(values) - len(got)} never" if len(got) < len(values) else ""
        return f"{statistics.mean(got):.2f} ± {std:.2f} (n={len(got)}{missing})"

    table: dict[str, Any] = {"seeds": [run["seed"] for run in runs]}
    for side in ("deepcourse", "loop"):
        table[side] = {
            "final_accuracy_%": spread([100 * run["final_accuracy"][side] for run in runs]),
            "each_%": [round(100 * run["final_accuracy"][side], 2) for run in runs],
            "total_train_s": spread([run["total_train_s"][side] for run in runs]),
            **{f"time_to_{t}_s": spread([run[t][f"{side}_s"] for run in runs]) for t in ("90%", "92%")}}
    table["ratio_total_train"] = [round(run["total_train_s"]["deepcourse"] / run["total_train_s"]["loop"], 3)
                                  for run in runs]
    table["ratio_time_to_90%"] = [run["90%"]["ratio"] for run in runs]
    gap = [100 * (run["final_accuracy"]["deepcourse"] - run["final_accuracy"]["loop"]) for run in runs]
    table["accuracy_gap_points"] = spread(gap)  # deepcourse - loop, seed by seed
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the recipe to run (default: cifar_fast90)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on 2,048 images: the wiring, not the speed")
    parser.add_argument("--out", type=Path, default=None, help="write the comparison here as JSON")
    parser.add_argument("--summarize", type=Path, nargs="+", metavar="JSON",
                        help="print the table of several seeds' --out files, and run nothing")
    args = parser.parse_args()
    if args.summarize:
        print(json.dumps(summarize(args.summarize), indent=2, ensure_ascii=False))
        return
    if "DEEPCOURSE_DATA" not in os.environ:
        parser.error("set DEEPCOURSE_DATA to the folder holding cifar10/")
    with tempfile.TemporaryDirectory(prefix="cifar_speed_") as tmp:
        work = Path(tmp)
        started = time.time()
        engine, precision = run_deepcourse(args.recipe, args.seed, args.threads, args.smoke, work)
        loop = run_loop(args.seed, args.threads, args.smoke, work, precision)  # the same numerics as the run's
    result = {"seed": args.seed, "smoke": args.smoke, "threads": args.threads, "recipe": args.recipe.name,
              "precision": precision,
              "wall_s": round(time.time() - started, 1), **compare(engine, loop),
              "epochs": {"deepcourse": engine, "loop": loop}}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}, indent=2))


if __name__ == "__main__":
    main()
