"""What does deepcourse's training loop cost over a hand-written one?

The same small CNN, data (pre-loaded tensors), batch size, optimizer and seed are trained for a fixed number of
steps by `deepcourse.training.loop.fit` and by a plain PyTorch loop in one process, step by step interleaved: after each
deepcourse step a callback runs one hand-written step. Each step's wall time is recorded (after warm-up steps),
and the median of the paired step-time ratios is printed. Interleaving makes both loops share the machine's
moods: timing two runs one after the other on a noisy VM gave per-round ratios anywhere between 0.73 and 1.30.

    python benchmarks/loop_overhead.py [--steps 30] [--rounds 5] [--batch-size 128] [--threads N]

Target: median paired step-time ratio <= 1.03 on CPU.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from deepcourse.data import ArrayDataset
from deepcourse.metrics import Accuracy, MetricCollection
from deepcourse.recipe.load import load_recipe
from deepcourse.registry import CALLBACKS, DATASETS, MODELS, TASKS
from deepcourse.task import DataBundle, Task
from deepcourse.training.callbacks import Callback

N_IMAGES = 4096


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_IMAGES, 3, 32, 32, generator=g), torch.randint(0, 10, (N_IMAGES,), generator=g)


def small_cnn() -> nn.Module:
    """LeNet-5 sized for 32x32 RGB (the CIFAR lab's model)."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


# -- the deepcourse side: a task registered the way a plugin would -------------------------------------------------
@DATASETS.register("bench_random_images", override=True)
def bench_random_images() -> None:
    """Random 3x32x32 images (loaded by the benchmark task itself)."""


@MODELS.register("bench_cnn", override=True)
def bench_cnn() -> nn.Module:
    """LeNet-5 for 32x32 RGB."""
    return small_cnn()


@TASKS.register("bench-classification", override=True)
class BenchTask(Task):
    """Cross-entropy on pre-loaded tensors."""

    def setup_data(self, data: Any, *, splits: Any, seed: int, artifacts: Any = None) -> DataBundle:
        x, y = make_data()
        return DataBundle({"train": ArrayDataset(x=x, y=y)})

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"])

    def evaluation_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"preds": model(batch["x"]).argmax(-1), "targets": batch["y"]}

    def create_metrics(self) -> MetricCollection:
        return MetricCollection(Accuracy())


class HandWrittenLoop:
    """The baseline: the loop a student writes, one step at a time so it can run interleaved with ours."""

    def __init__(self, batch_size: int, lr: float) -> None:
        torch.manual_seed(0)
        self.x, self.y = make_data()
        self.model = small_cnn()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(0))
        self.batch_size, self.i = batch_size, 0
        self.model.train()

    def step(self) -> None:
        idx = self.perm[self.i * self.batch_size:(self.i + 1) * self.batch_size]
        self.i += 1
        loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


@CALLBACKS.register("bench_paired_steps", override=True)
class PairedSteps(Callback):
    """After each deepcourse step, runs one hand-written step, timing both.

    Pairing step by step means both loops see the same machine at the same moment: on a shared, noisy VM a
    comparison of two runs made one after the other measures the noise more than the loops.
    """

    baseline: HandWrittenLoop
    ours: list[float] = []
    theirs: list[float] = []

    def on_train_start(self, ctx: Any) -> None:
        PairedSteps.ours, PairedSteps.theirs = [], []
        self.last = time.perf_counter()

    def on_step_end(self, ctx: Any, loss: float | None) -> None:
        now = time.perf_counter()
        PairedSteps.ours.append(now - self.last)  # includes fetching this step's batch from our loader
        PairedSteps.baseline.step()
        self.last = time.perf_counter()
        PairedSteps.theirs.append(self.last - now)


def run_paired(steps: int, batch_size: int, lr: float) -> tuple[list[float], list[float]]:
    """One deepcourse run of `steps` steps with a hand-written step after each; returns both step times."""
    from deepcourse.training.loop import fit

    PairedSteps.baseline = HandWrittenLoop(batch_size, lr)
    recipe = load_recipe(data={
        "name": "loop_overhead", "seed": 0,
        "task": {"name": "bench-classification"}, "data": {"name": "bench_random_images", "batch_size": batch_size},
        "model": {"name": "bench_cnn"}, "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
        "train": {"epochs": 1, "max_steps": steps, "progress": False, "log_every": 50,
                  "callbacks": [{"name": "bench_paired_steps"}]},
    })
    with tempfile.TemporaryDirectory() as tmp:
        fit(recipe, run_dir=Path(tmp) / "run")
    return PairedSteps.ours, PairedSteps.theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for both loops")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps * args.batch_size > N_IMAGES:
        parser.error(f"--steps x --batch-size must stay within one epoch of {N_IMAGES} images")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps of batch "
          f"{args.batch_size}, {args.rounds} rounds, first {args.warmup} steps of each run ignored")
    ours: list[float] = []
    theirs: list[float] = []
    pair_ratios: list[float] = []
    for r in range(args.rounds):
        a, b = run_paired(args.steps, args.batch_size, 0.01)
        a, b = a[args.warmup:], b[args.warmup:]
        ours += a
        theirs += b
        pair_ratios += [x / y for x, y in zip(a, b)]
        print(f"round {r + 1}: deepcourse median {statistics.median(a) * 1e3:.2f} ms/step, hand-written "
              f"{statistics.median(b) * 1e3:.2f} ms/step, ratio {statistics.median(a) / statistics.median(b):.3f}")
    print(f"median step time: deepcourse {statistics.median(ours) * 1e3:.2f} ms, hand-written "
          f"{statistics.median(theirs) * 1e3:.2f} ms (ratio of the medians "
          f"{statistics.median(ours) / statistics.median(theirs):.3f})")
    # The paired statistic: each deepcourse step against the hand-written step run right after it. When another
    # job takes a core now and then, step times split into fast and slow groups and the ratio of the two
    # medians jumps with whichever group each median lands in; the pairs stay comparable.
    print(f"step-time ratio deepcourse / hand-written, median of {len(pair_ratios)} paired steps: "
          f"{statistics.median(pair_ratios):.3f} (target <= 1.03)")


if __name__ == "__main__":
    main()
