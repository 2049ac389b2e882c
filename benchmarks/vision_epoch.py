"""One CIFAR-10 epoch of LeNet-5 on the CPU, three ways, in one command:

  deepcourse  `deepcourse run` machinery (engine + image-classification task): cached uint8 tensors, one
              index_select per batch, random crop (pad 4, reflect) + flip + normalisation batched in the step
  (a) pure    a hand-written loop over preloaded, normalised float tensors: the same model, batch size and
              optimizer, no augmentation, no framework: the floor
  (b) classic the usual torchvision pipeline: a Dataset of uint8 arrays, per-sample PIL RandomCrop(32, padding=4,
              reflect) + RandomHorizontalFlip + ToTensor + Normalize, DataLoader(num_workers=2)

and prints deepcourse / (a) (target <= 1.15) and (b) / deepcourse (target >= 2). Every leg trains on the same
45,000 images (CIFAR-10 train minus deepcourse's 10% validation split, seed 0). Times are training-loop seconds
(set-up and evaluation excluded; the deepcourse leg is timed by a callback from its first to its last step).
Besides wall time, the deepcourse and (a) legs report this process's CPU time: on a machine shared with other
jobs, wall time mostly measures the neighbours, CPU time the work (the classic leg's workers are other processes,
so it is compared by wall time only).

    DEEPCOURSE_DATA=../shared/data python benchmarks/vision_epoch.py [--threads N] [--repeats R]

On a CPU shared with other jobs, set OMP_WAIT_POLICY=PASSIVE (spinning OpenMP threads otherwise stall each
other); it applies to all three legs alike.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

BATCH = 128
LR, MOMENTUM = 0.05, 0.9
MODEL = {"name": "lenet5", "activation": "relu", "pool": "max"}


class Clock:
    """Wall and CPU seconds of a stretch of code."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


TIMES: list[tuple[float, float]] = []


def register_timer() -> None:
    from deepcourse.registry import CALLBACKS
    from deepcourse.training.callbacks import Callback

    @CALLBACKS.register("bench_epoch_timer")
    class EpochTimer(Callback):
        """Times the training loop from its start to the end of its first epoch's last step."""

        def on_train_start(self, ctx: Any) -> None:
            self.clock = Clock()

        def on_step_end(self, ctx: Any, loss: float | None) -> None:
            if ctx.state.step_in_epoch == ctx.steps_per_epoch:
                TIMES.append(self.clock.stop())


def recipe(batch_size: int, augment: bool) -> dict[str, Any]:
    transforms = [{"name": "random_crop", "padding": 4, "padding_mode": "reflect"}, {"name": "hflip"}]
    return {
        "name": "bench_cifar_lenet5", "seed": 0, "requires_plugins": ["vision"],
        "task": {"name": "image-classification", "transforms": transforms if augment else []},
        "data": {"name": "cifar10", "batch_size": batch_size, "eval_batch_size": 1000, "val_split": 0.1},
        "model": dict(MODEL),
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM},
        "scheduler": {"name": "constant"},
        "train": {"epochs": 1, "progress": False, "log_every": 100, "callbacks": [{"name": "bench_epoch_timer"}]},
    }


def training_data() -> tuple[torch.Tensor, torch.Tensor, list[float], list[float]]:
    """The deepcourse leg's training split, for the other two legs."""
    from deepcourse.api import build_task, load_recipe

    r = load_recipe(data=recipe(BATCH, True))
    bundle = build_task(r).setup_data(r.data, splits=("train",), seed=r.seed)
    train = bundle.splits["train"].arrays
    return train["image"], train["label"], bundle.artifacts["mean"], bundle.artifacts["std"]


def build_model() -> torch.nn.Module:
    from deepcourse.recipe.builders import call_builder
    from deepcourse.registry import MODELS

    torch.manual_seed(0)
    options = {k: v for k, v in MODEL.items() if k != "name"}
    return call_builder(MODELS.get(MODEL["name"]), options, loc="model",
                        provided={"num_classes": 10, "in_channels": 3, "image_size": 32})


def train_loop(batches: Any, model: torch.nn.Module) -> tuple[float, float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()
    clock = Clock()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return clock.stop()


def leg_deepcourse(batch_size: int, augment: bool) -> tuple[float, float]:
    from deepcourse.recipe.load import load_recipe
    from deepcourse.training.loop import fit

    with tempfile.TemporaryDirectory() as tmp:
        fit(load_recipe(data=recipe(batch_size, augment)), runs_root=Path(tmp))
    return TIMES.pop()


def leg_pure(images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float],
             batch_size: int) -> tuple[float, float]:
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    batches = ((x[idx], labels[idx]) for idx in order.split(batch_size))
    return train_loop(batches, build_model())


class ClassicCIFAR(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's way: HWC uint8 arrays, a PIL image and a transform chain per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any) -> None:
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def leg_classic(images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float],
                batch_size: int, workers: int) -> tuple[float, float]:
    from torchvision import transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(ClassicCIFAR(images, labels, transform), batch_size=batch_size,
                                         shuffle=True, num_workers=workers)
    return train_loop(loader, build_model())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="run each leg this many times, keep the fastest")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the classic pipeline")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--no-augment-leg", action="store_true", help="also time deepcourse without augmentation")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("DEEPCOURSE_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))

    register_timer()
    images, labels, mean, std = training_data()
    print(f"CIFAR-10 train: {len(labels)} images, LeNet-5 ({sum(p.numel() for p in build_model().parameters())} "
          f"parameters), batch {args.batch_size}, SGD momentum {MOMENTUM}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
          flush=True)
    legs = {
        "deepcourse": lambda: leg_deepcourse(args.batch_size, True),
        "pure": lambda: leg_pure(images, labels, mean, std, args.batch_size),
        "classic": lambda: leg_classic(images, labels, mean, std, args.batch_size, args.workers),
    }
    if args.no_augment_leg:
        legs["deepcourse_no_aug"] = lambda: leg_deepcourse(args.batch_size, False)
    wall: dict[str, list[float]] = {k: [] for k in legs}
    cpu: dict[str, list[float]] = {k: [] for k in legs}
    for r in range(args.repeats):  # interleaved, so a busy moment on a shared machine hits every leg alike
        for name, leg in legs.items():
            w, c = leg()
            wall[name].append(w)
            cpu[name].append(c)
            print(f"  run {r + 1}: {name:<18} {w:7.2f} s wall  {c:7.2f} s cpu", flush=True)
    best = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    n = len(labels)
    print(f"fastest of {args.repeats} (wall / this process's CPU):")
    print(f"deepcourse epoch (crop + flip on tensors): {best['deepcourse']:7.2f} s / {best_cpu['deepcourse']:6.2f} s "
          f"({n / best['deepcourse']:,.0f} img/s)")
    if "deepcourse_no_aug" in best:
        print(f"deepcourse epoch (no augmentation):       {best['deepcourse_no_aug']:7.2f} s / "
              f"{best_cpu['deepcourse_no_aug']:6.2f} s")
    print(f"(a) pure compute on preloaded tensors:    {best['pure']:7.2f} s / {best_cpu['pure']:6.2f} s")
    print(f"(b) classic PIL transforms + DataLoader:  {best['classic']:7.2f} s   ({args.workers} workers)")
    ratio_a, ratio_a_cpu = best["deepcourse"] / best["pure"], best_cpu["deepcourse"] / best_cpu["pure"]
    ratio_b = best["classic"] / best["deepcourse"]
    print(f"deepcourse / (a) pure compute = {ratio_a:.3f}x wall, {ratio_a_cpu:.3f}x CPU   (target <= 1.15: "
          f"{'met' if ratio_a <= 1.15 else 'MISSED'} on wall time)")
    print(f"(b) classic / deepcourse      = {ratio_b:.2f}x faster (target >= 2: {'met' if ratio_b >= 2 else 'MISSED'})")


if __name__ == "__main__":
    main()
