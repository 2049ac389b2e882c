"""Setting up HuggingFace Accelerate for a recipe, with the few workarounds it needs, each named in one function.

Workarounds that touch Accelerate's internals say which version they were checked against; everything else here
uses Accelerate's public API.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator

import torch
from accelerate import Accelerator

from .allocator import keep_freed_memory
from .errors import RecipeError
from .schema import Recipe


def warn_single_cpu_launch() -> None:
    """`accelerate launch --cpu --num_processes N` starts ONE process unless mpirun is configured (accelerate
    issue #2741). Its only trace is MASTER_ADDR without a WORLD_SIZE: say so instead of silently running 1."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env and "WORLD_SIZE" not in env \
            and "PMI_SIZE" not in env and "OMPI_COMM_WORLD_SIZE" not in env:
        print("deepcourse: warning: `accelerate launch --cpu --num_processes N` started a single process (accelerate "
              "needs mpirun for several CPU processes). For N CPU processes use `accelerate launch --multi_gpu "
              "--num_processes N -m deepcourse ...` on a machine without GPUs (or with CUDA_VISIBLE_DEVICES=), or "
              "`torchrun --nproc_per_node N -m deepcourse ...`", file=sys.stderr, flush=True)


def remember_lomo_probe() -> None:
    """Accelerate 1.15 asks `is_lomo_available()` twice in every `AcceleratedOptimizer.step`, and each answer walks
    sys.path through importlib: 0.3-0.4 ms with a few editable installs, 5% of a small CNN's CPU step
    (benchmarks/loop_overhead.py). The answer cannot change within a process, so remember it (a module attribute
    of accelerate.optimizer, checked against accelerate 1.15)."""
    import accelerate.optimizer as accelerate_optimizer

    probe = getattr(accelerate_optimizer, "is_lomo_available", None)
    if probe is not None and not hasattr(probe, "cache_info"):
        accelerate_optimizer.is_lomo_available = functools.cache(probe)


def forget_other_precision(mixed_precision: str) -> None:
    """Accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision. Runs
    made one after another in one process (a notebook, a sweep, the tests) each choose their own, so let go of the
    old precision; the process group (PartialState) is kept. Accelerate has no public way to do this: it uses
    `AcceleratorState._shared_state` and `_reset_state`, checked against accelerate 1.15."""
    from accelerate.state import AcceleratorState

    shared = getattr(AcceleratorState, "_shared_state", None)
    if shared and str(shared.get("_mixed_precision", mixed_precision)) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


def make_accelerator(recipe: Recipe, *, trackers: bool = True) -> Accelerator:
    """The Accelerator a recipe trains (or, with trackers=False, evaluates) under."""
    warn_single_cpu_launch()
    remember_lomo_probe()
    if recipe.train.keep_freed_memory:
        keep_freed_memory()
    if trackers and "tensorboard" in recipe.train.trackers:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise RecipeError("train.trackers: 'tensorboard' needs the tensorboard package "
                              "(pip install tensorboard)") from None
    # With no accelerator present, say cpu=True: only then does Accelerate join a multi-process launch with gloo
    # (cpu=False silently gives each process a private, non-distributed run).
    cpu = recipe.train.device == "cpu" or not has_accelerator()
    forget_other_precision(recipe.train.mixed_precision)
    return Accelerator(cpu=cpu, mixed_precision=recipe.train.mixed_precision,
                       gradient_accumulation_steps=recipe.train.grad_accum, rng_types=[])


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """`train.threads` for the length of a run; the caller's thread count is restored afterwards."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
