"""The GPU check's measuring parts: the speed settings, the hand-written reference loop, and the probes that both
loops share (a step window with its clock, host syncs by file:line, torch.compile's recompilations).

The hand-written loop is what a careful student writes for `recipes/cifar_resnet.toml`, with nothing of deepcourse in
its steps: the same network (built by the same registered builder), data split, batch size, SGD with Nesterov
momentum and weight decay, one-cycle schedule, label smoothing, random crop (4 px, reflect) and flip on the device,
in the same precision and memory layout. It keeps no running loss or accuracy and logs nothing, so it never waits for
the GPU: the floor that `deepcourse run` is compared with.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Settings:
    """The speed switches, each named as the recipe key that sets it in `deepcourse run`."""

    precision: str = "bf16"  # train.mixed_precision: bf16 | fp16 | fp32 ("no")
    channels_last: bool = True  # task.channels_last
    fused: bool = True  # optimizer.fused (off: torch's default, foreach on a GPU)
    tf32: bool = True  # train.tf32
    cudnn_benchmark: bool = True  # train.cudnn_benchmark
    on_device: bool = True  # data.on_device (off: batches from pinned host memory, copied without blocking)
    compile: bool = False  # train.compile (inductor; the eager backend in smoke mode)

    def overrides(self, compile_backend: str) -> list[str]:
        """The same settings as `--set` overrides of `deepcourse run`."""
        precision = {"fp32": "no"}.get(self.precision, self.precision)
        on = {True: "true", False: "false"}
        return [f"train.mixed_precision='{precision}'", f"task.channels_last={on[self.channels_last]}",
                f"optimizer.fused={on[self.fused]}", f"train.tf32={on[self.tf32]}",
                f"train.cudnn_benchmark={on[self.cudnn_benchmark]}", f"data.on_device={on[self.on_device]}",
                f"train.compile={{backend = '{compile_backend}'}}" if self.compile else "train.compile=false"]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Reference:
    """What the hand-written loop trains: the recipe's training split (uint8 images on the host) and its choices."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: Sequence[float]
    std: Sequence[float]
    build_model: Callable[[], nn.Module]
    batch_size: int
    optimizer: dict[str, Any]  # lr, momentum, nesterov, weight_decay
    pct_start: float
    label_smoothing: float


def switches(settings: Settings, device: torch.device) -> None:
    """TF32 and cuDNN's benchmark mode: process-wide, so set for every leg, on and off alike."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark


def augment(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """uint8 batch -> normalised float batch, each image cropped at random from its reflect-padded copy and flipped
    with probability 1/2: one gather and one select for the batch, all on the batch's device."""
    n, c, h, w = x.shape
    x = F.pad(x.float().div_(255), (pad,) * 4, mode="reflect")
    top = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device)
    left = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device)
    rows = top + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = left + torch.arange(w, device=x.device).view(1, 1, 1, w)
    x = x[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1),
          rows, cols]
    flip = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
    return (torch.where(flip, x.flip(3), x) - mean) / std


def hand_written(ref: Reference, settings: Settings, window: Window, device: torch.device,
                 compile_backend: str) -> dict[str, Any]:
    """Train `window.total` steps by hand; the window times and probes them. Returns the window's figures."""
    switches(settings, device)
    torch.manual_seed(0)
    model = ref.build_model().to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), **ref.optimizer, fused=settings.fused)
    steps_per_epoch = len(ref.labels) // ref.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=ref.optimizer["lr"], pct_start=ref.pct_start,
                                                total_steps=max(steps_per_epoch, window.total) + 1)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)
    forward = torch.compile(model, backend=compile_backend) if settings.compile else model
    if settings.on_device:
        images, labels = ref.images.to(device), ref.labels.to(device)
    else:
        images, labels = ref.images, ref.labels
    mean = torch.tensor(ref.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(ref.std, device=device).view(1, -1, 1, 1)
    model.train()
    loss = torch.zeros(())
    window.start()
    for step, (x, y) in enumerate(batches(images, labels, ref.batch_size, window.total, device), start=1):
        x = augment(x, mean, std)
        if settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(forward(x), y, label_smoothing=ref.label_smoothing)
        scaler.scale(loss).backward()
        scaler.step(opt)  # fp16 with a fused optimizer: the overflow check stays on the device
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        window.after_step(step)
    return {"last_loss": round(float(loss.detach()), 4)}  # host sync, after the window


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int,
            device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` batches of whole epochs' orders (the short last batch left out). Data on the device: the order is
    drawn there. On the host: each batch is cut there, pinned and copied without blocking, as a DataLoader with
    pin_memory does."""
    n, done = len(labels), 0
    while True:
        order = torch.randperm(n, device=images.device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            x, y = images[idx], labels[idx]
            if x.device != device:
                if device.type == "cuda":
                    x, y = x.pin_memory(), y.pin_memory()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield x, y
            done += 1
            if done == steps:
                return


# -- probes -------------------------------------------------------------------------------------------------------
class Window:
    """Which optimizer steps warm up (compilation, cuDNN's choices), which are probed for host syncs, which are timed.

    Steps 1..warmup warm up; the next `probe` steps run under torch's sync debug mode; the `timed` steps after them
    run between two device synchronizations, so their time is the GPU's too, not only the host's queueing."""

    def __init__(self, warmup: int, probe: int, timed: int, device: torch.device, syncs: SyncLog,
                 compiles: CompileLog | None = None) -> None:
        self.warmup, self.probe, self.timed, self.device = warmup, probe, timed, device
        self.syncs, self.compiles = syncs, compiles
        self.started = self.warm_end = self.t0 = self.t1 = 0.0

    @property
    def total(self) -> int:
        return self.warmup + self.probe + self.timed

    def start(self) -> None:
        self.started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def after_step(self, step: int) -> None:
        """Called after every optimizer step (1-based), by either loop."""
        if step == self.warmup:
            self.warm_end = self.sync()
            if self.compiles is not None:
                self.compiles.mark()
            self.syncs.start()
        if step == self.warmup + self.probe:
            self.syncs.stop()
            self.t0 = self.sync()
        if step == self.total:
            self.t1 = self.sync()
            if self.compiles is not None:
                self.compiles.mark()

    def result(self, batch_size: int) -> dict[str, Any]:
        if not self.t1:
            raise RuntimeError(f"the loop stopped before step {self.total}, the end of the timed window")
        seconds = self.t1 - self.t0
        cuda = self.device.type == "cuda"
        return {"warmup_steps": self.warmup, "warmup_s": round(self.warm_end - self.started, 2),
                "timed_steps": self.timed, "s_per_step": round(seconds / self.timed, 6),
                "images_per_s": round(self.timed * batch_size / seconds, 1),
                "host_syncs": self.syncs.result(self.probe),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


class SyncLog:
    """Host syncs by where they happen. torch's sync debug mode ('warn') warns at every CUDA operation that makes
    the host wait for the device; the Python stack at that warning names the line. Each is credited to the innermost
    line of our own code (deepcourse, its plugins, this check: `roots`), with the library line it went through."""

    def __init__(self, cuda: bool, roots: Sequence[str]) -> None:
        self.cuda, self.roots = cuda, tuple(os.path.join(r, "") for r in roots)
        self.sites: Counter[str] = Counter()
        self.others: set[tuple[str, int]] = set()
        self._capture: Any = None

    def start(self) -> None:
        if self.cuda:
            self._capture = self.capturing()
            self._capture.__enter__()
            torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if self._capture is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._capture.__exit__(None, None, None)
            self._capture = None

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Every warning is seen (not once per line); sync warnings are counted, the others shown once."""
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            shown = warnings.showwarning

            def record(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                       line: Any = None) -> None:
                if "synchroniz" in str(message):
                    self.sites[self.site(traceback.extract_stack()[:-1])] += 1
                elif (filename, lineno) not in self.others:
                    self.others.add((filename, lineno))
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = record
            yield

    def site(self, stack: traceback.StackSummary) -> str:
        frames = [f for f in stack if not f.filename.endswith(f"{os.sep}warnings.py")]
        inner = frames[-1]
        ours = next((f for f in reversed(frames) if f.filename.startswith(self.roots)), None)
        if ours is None or ours is inner:
            return short(inner)
        return f"{short(ours)} (in {short(inner)})"

    def result(self, steps: int) -> dict[str, Any]:
        if not self.cuda:
            return {"skipped": "torch's sync debug mode is CUDA's: no host syncs to count on a CPU"}
        total = sum(self.sites.values())
        return {"steps": steps, "per_step": round(total / steps, 3),
                "sites": [{"where": k, "count": v, "per_step": round(v / steps, 3)} for k, v in
                          self.sites.most_common()]}


def short(frame: traceback.FrameSummary) -> str:
    """file:line, the file relative to the sys.path entry it was imported from (deepcourse/training/loop.py:230)."""
    bases = [p for p in sys.path if p and frame.filename.startswith(os.path.join(p, ""))]
    path = os.path.relpath(frame.filename, max(bases, key=len)) if bases else os.path.basename(frame.filename)
    return f"{path}:{frame.lineno}"


class CompileLog(logging.Handler):
    """torch.compile over one leg: dynamo starts afresh, its 'recompiles' log artifact (TORCH_LOGS=recompiles) is
    caught here as well as printed, and its counters give the graphs made and the graph breaks."""

    LOGGER = "torch._dynamo.guards.__recompiles"

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.marks: list[int] = []

    def start(self) -> None:
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        torch._logging.set_logs(recompiles=True)
        logging.getLogger(self.LOGGER).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def mark(self) -> None:
        self.marks.append(len(self.messages))

    def stop(self) -> dict[str, Any]:
        from torch._dynamo.utils import counters

        logging.getLogger(self.LOGGER).removeHandler(self)
        torch._logging.set_logs()
        reasons = [next((ln.strip()[2:] for ln in m.splitlines() if ln.strip().startswith("- ")), m.splitlines()[0])
                   for m in self.messages]
        breaks = counters["graph_break"]
        return {"recompiles": len(self.messages),
                "recompiles_after_warmup": self.marks[1] - self.marks[0] if len(self.marks) >= 2 else None,
                "graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(breaks.values()),
                "recompile_reasons": list(dict.fromkeys(reasons))[:5],
                "graph_break_reasons": [k for k, _ in breaks.most_common(5)]}
