"""Fine-tuning against training from scratch, side by side, in one command (issue 24's acceptance):

  1. `recipes/cifar_pretrain.toml` once (seed 0): a small CNN on 20,000 CIFAR-10 training images;
  2. for each seed, `recipes/cifar_finetune.toml` on 2,000 other draws of the training images, started from that
     run (new head, body at a tenth of the rate), and the same recipe from scratch (--set model.init_from=''
     --set optimizer.groups=[]): the same model, data, schedule and number of steps;

and prints a table of the best validation accuracy (the same 2,000 validation images, carved from train and never
trained on by either run) and each run's training wall time, with mean and standard deviation over the seeds.
The pretraining time is printed apart: the comparison is what a student with a source run gets in the same time.

    DEEPCOURSE_DATA=../shared/data python benchmarks/finetune.py [--seeds 3] [--out runs/bench-finetune]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def run(recipe: str, run_dir: Path, *overrides: str) -> dict:
    """`deepcourse run` in a subprocess; its summary.json."""
    sets = [arg for o in overrides for arg in ("--set", o)]
    done = subprocess.run([sys.executable, "-m", "deepcourse", "run", str(RECIPES / recipe), "--run-dir",
                           str(run_dir), "--set", "train.progress=false", *sets], text=True, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"{recipe} {' '.join(overrides)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def accuracy(summary: dict) -> float:
    return float(summary["best"]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-finetune"))
    args = parser.parse_args()
    source = args.out / "pretrain"
    pre = json.loads((source / "summary.json").read_text()) if (source / "summary.json").exists() else \
        run("cifar_pretrain.toml", source)
    print(f"pretraining: {accuracy(pre):.4f} validation accuracy in {pre['wall_time_s']:.0f} s (not counted below)")
    legs = {"fine-tuned": [f"model.init_from='{source}'"],
            "from scratch": ["model.init_from=''", "optimizer.groups=[]"]}
    results: dict[str, list[tuple[float, float]]] = {leg: [] for leg in legs}
    for seed in range(args.seeds):
        for leg, overrides in legs.items():
            summary = run("cifar_finetune.toml", args.out / f"{leg.replace(' ', '-')}-{seed}", f"seed={seed}",
                          *overrides)
            results[leg].append((accuracy(summary), summary["wall_time_s"]))
            print(f"seed {seed} {leg}: {accuracy(summary):.4f} in {summary['wall_time_s']:.0f} s", flush=True)
    print("\n| run | validation accuracy (mean ± std) | seconds (mean) | seeds |\n|---|---|---|---|")
    for leg, rows in results.items():
        accs = [a for a, _ in rows]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {leg} | {statistics.mean(accs):.4f} ± {spread:.4f} | {statistics.mean(s for _, s in rows):.0f} | "
              f"{len(rows)} |")


if __name__ == "__main__":
    main()
