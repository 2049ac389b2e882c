"""Setting up HuggingFace Accelerate for a recipe, with the few workarounds it needs, each named in one function.

Workarounds that touch Accelerate's internals say which version they were checked against; everything else here
uses Accelerate's public API.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    GradientAccumulationPlugin,
    ProjectConfiguration,
    TorchDynamoPlugin,
)

from deepcourse.errors import RecipeError, UserError
from deepcourse.recipe.schema import CompileOptions, Recipe
from deepcourse.registry import TASKS
from deepcourse.training.compiling import check_compile
from deepcourse.training.precision import Precision, choose

log = logging.getLogger(__name__)


def warn_single_cpu_launch() -> None:
    """`accelerate launch --cpu --num_processes N` starts ONE process unless mpirun is configured (accelerate
    issue #2741). Its only trace is MASTER_ADDR without a WORLD_SIZE: say so instead of silently running 1."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env and "WORLD_SIZE" not in env \
            and "PMI_SIZE" not in env and "OMPI_COMM_WORLD_SIZE" not in env:
        log.warning("`accelerate launch --cpu --num_processes N` started a single process (accelerate needs mpirun "
                    "for several CPU processes). For N CPU processes use `accelerate launch --multi_gpu "
                    "--num_processes N -m deepcourse ...` on a machine without GPUs (or with CUDA_VISIBLE_DEVICES=), "
                    "or `torchrun --nproc_per_node N -m deepcourse ...`")


def remember_lomo_probe() -> None:
    """Accelerate 1.15 asks `is_lomo_available()` twice in every `AcceleratedOptimizer.step`, and each answer walks
    sys.path through importlib: 0.3-0.4 ms with a few editable installs, 5% of a small CNN's CPU step
    (benchmarks/loop_overhead.py). The answer cannot change within a process, so remember it (a module attribute
    of accelerate.optimizer, checked against accelerate 1.15)."""
    import accelerate.optimizer as accelerate_optimizer

    probe = getattr(accelerate_optimizer, "is_lomo_available", None)
    if probe is not None and not hasattr(probe, "cache_info"):
        accelerate_optimizer.is_lomo_available = functools.cache(probe)


def forget_other_settings(mixed_precision: str, dynamo: TorchDynamoPlugin) -> None:
    """Accelerate keeps one process-wide state: it refuses a second Accelerator with another mixed precision, and
    silently keeps the first one's torch.compile choice (its dynamo plugin), so a compiled run after an eager one
    trained eager. Runs made one after another in one process (a notebook, a sweep, the tests, the GPU check) each
    choose their own, so let go of the old state when either differs; the process group (PartialState) is kept.
    Accelerate has no public way to do this: it uses `AcceleratorState._shared_state` and `_reset_state`, checked
    against accelerate 1.15."""
    from accelerate.state import AcceleratorState

    shared = getattr(AcceleratorState, "_shared_state", None)
    if shared and (str(shared.get("_mixed_precision", mixed_precision)) != mixed_precision
                   or shared.get("dynamo_plugin", dynamo) != dynamo):
        AcceleratorState._reset_state(reset_partial_state=False)


def has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


@dataclass(frozen=True)
class Settings:
    """What a run trains with after the one precedence rule: a value the recipe sets wins (with a one-line warning
    when the launcher said otherwise); an unset one is the launcher's (`accelerate launch` flags or its config file,
    which reach the process as ACCELERATE_* variables), else the default. `source` says where each came from."""

    mixed_precision: str
    grad_accum: int
    compile: dict[str, Any] | None  # torch.compile options, or None when not compiling
    source: dict[str, str] = field(default_factory=dict)
    precision: Precision | None = None  # mixed precision and memory format, "auto" resolved on this machine

    def as_record(self, model: torch.nn.Module | None = None) -> dict[str, Any]:
        """For run.json: the effective values and where each came from (with `model`, also its memory format and
        why "auto" chose what it did)."""
        record = {"mixed_precision": self.mixed_precision, "grad_accum": self.grad_accum, "compile": self.compile,
                  "settings_from": dict(self.source)}
        if model is not None and self.precision is not None:
            from deepcourse.training.precision import uses_channels_last

            record["channels_last"] = uses_channels_last(model)
            if self.precision.reason:
                record["precision_reason"] = self.precision.reason
        return record


def effective_settings(recipe: Recipe, *, warn: bool = True) -> Settings:
    env, train = os.environ, recipe.train
    source: dict[str, str] = {}
    launcher_mp = env.get("ACCELERATE_MIXED_PRECISION", "").lower() or None
    launcher_accum = int(env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"]) \
        if env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").strip().isdigit() else None
    backend = env.get("ACCELERATE_DYNAMO_BACKEND", "no").lower()
    launcher_compile = None if backend in ("", "no") else {
        "backend": backend, "mode": env.get("ACCELERATE_DYNAMO_MODE") or None,
        "fullgraph": env.get("ACCELERATE_DYNAMO_USE_FULLGRAPH", "false").lower() in ("1", "true", "yes"),
        "dynamic": _env_bool("ACCELERATE_DYNAMO_USE_DYNAMIC")}
    if train.compile is None:
        recipe_compile: Any = ...
    elif train.compile is False:
        recipe_compile = None
    else:
        options = CompileOptions() if train.compile is True else train.compile
        recipe_compile = options.model_dump()
    default_mp = getattr(TASKS.get(recipe.task.name), "default_precision", "no") \
        if recipe.task.name in TASKS else "no"
    asked = _choose("train.mixed_precision", train.mixed_precision, launcher_mp, default_mp, source, warn)
    precision = choose(asked, train.channels_last, run_device(recipe))
    mp = precision.mixed_precision
    accum = _choose("train.grad_accum", train.grad_accum, launcher_accum, 1, source, warn)
    compiled = _choose("train.compile", None if recipe_compile is ... else recipe_compile, launcher_compile, None,
                       source, warn and recipe_compile is not ..., explicit=recipe_compile is not ...)
    return Settings(mp, int(accum), compiled, source, precision)


def run_device(recipe: Recipe) -> torch.device:
    """The kind of device a recipe trains on here (its index is Accelerate's to choose)."""
    if recipe.train.device == "cpu" or not has_accelerator():
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "mps")


def _choose(key: str, recipe_value: Any, launcher_value: Any, default: Any, source: dict[str, str], warn: bool,
            explicit: bool | None = None) -> Any:
    name = key.split(".")[-1]
    explicit = recipe_value is not None if explicit is None else explicit
    if explicit:
        source[name] = "recipe"
        if warn and launcher_value is not None and launcher_value != recipe_value:
            log.warning(f"{key} = {_shown(recipe_value)} (the recipe's) is used; the launcher says "
                        f"{_shown(launcher_value)}")
        return recipe_value
    if launcher_value is not None:
        source[name] = "launcher"
        return launcher_value
    source[name] = "default"
    return default


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {v!r}" for k, v in value.items() if v is not None) + "}"
    return "off" if value is None else repr(value)


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value is None else value.lower() in ("1", "true", "yes")


def refuse_unsupported_launch(settings: Settings, cpu: bool) -> None:
    """Exit 2 before training on what deepcourse does not support, naming what is."""
    env = os.environ
    for variable, flag, name in (("ACCELERATE_USE_FSDP", "--use_fsdp", "FSDP"),
                                 ("ACCELERATE_USE_DEEPSPEED", "--use_deepspeed", "DeepSpeed"),
                                 ("ACCELERATE_USE_MEGATRON_LM", "--use_megatron_lm", "Megatron-LM")):
        if env.get(variable, "false").lower() == "true":
            raise UserError(f"accelerate launch {flag}: {name} is not supported by deepcourse, which trains data-"
                            f"parallel (DDP: each process holds the whole model and optimizer, as the course's "
                            f"networks fit one device). Launch with --multi_gpu (GPUs) or without {flag}; see "
                            f"docs/scaling.md")
    if settings.mixed_precision == "fp16" and cpu:
        where = "train.mixed_precision" if settings.source.get("mixed_precision") == "recipe" else \
            "accelerate launch --mixed_precision (ACCELERATE_MIXED_PRECISION)"
        raise RecipeError(f"{where}: 'fp16' needs a CUDA GPU (it trains with a gradient scaler), and this run is on "
                          f"the CPU. Valid here: 'bf16' (CPU autocast) or 'no'")


def make_accelerator(recipe: Recipe, *, trackers: bool = True, warn: bool = True) -> Accelerator:
    """The Accelerator a recipe trains (or, with trackers=False, evaluates) under, after `effective_settings`."""
    warn_single_cpu_launch()
    remember_lomo_probe()
    if recipe.train.keep_freed_memory:
        keep_freed_memory()
    settings = effective_settings(recipe, warn=warn)
    # With no accelerator present, say cpu=True: only then does Accelerate join a multi-process launch with gloo
    # (cpu=False silently gives each process a private, non-distributed run).
    cpu = recipe.train.device == "cpu" or not has_accelerator()
    refuse_unsupported_launch(settings, cpu)
    check_compile(settings.compile, from_recipe=settings.source.get("compile") == "recipe", cpu=cpu, warn=warn)
    log_with = list(recipe.train.trackers) if trackers else []
    check_trackers(log_with)
    apply_gpu_flags(recipe)
    compiled = settings.compile or {"backend": "no"}
    dynamo = TorchDynamoPlugin(**{k: v for k, v in compiled.items() if v is not None})
    forget_other_settings(settings.mixed_precision, dynamo)
    loaders = DataLoaderConfiguration(non_blocking=not cpu)  # with pinned memory: copies overlap the step
    # trackers start once the run directory exists (deepcourse.training.tracking sets logging_dir to it); until then, a
    # placeholder, since Accelerate checks at construction that file-writing trackers have one
    project = ProjectConfiguration(logging_dir=os.getcwd())
    return Accelerator(cpu=cpu, mixed_precision=settings.mixed_precision, dynamo_plugin=dynamo,
                       gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=settings.grad_accum),
                       dataloader_config=loaders, log_with=log_with or None, project_config=project, rng_types=[])


def check_trackers(names: Sequence[str]) -> None:
    """Each tracker's package must be importable: say what to install, before a run directory exists."""
    import importlib.util

    needs = {name: [name] for name in names}
    if "mlflow" in needs and "MLFLOW_TRACKING_URI" not in os.environ:
        needs["mlflow"] += ["sqlalchemy", "alembic"]  # the local sqlite store (deepcourse.training.tracking)
    hints = {"tensorboard": "pip install tensorboard (or deepcourse[tensorboard])",
             "mlflow": "pip install -e '.[mlflow]' in deepcourse's checkout (mlflow, sqlalchemy, alembic)"}
    problems = [f"'{name}' needs the {', '.join(missing)} package{'s' if len(missing) > 1 else ''} "
                f"({hints.get(name, f'pip install {name}')})"
                for name, modules in needs.items()
                if (missing := [m for m in modules if importlib.util.find_spec(m) is None])]
    if problems:
        raise RecipeError("train.trackers: " + "; ".join(problems))


def apply_gpu_flags(recipe: Recipe) -> None:
    """train.tf32 and train.cudnn_benchmark, through torch's public switches (no effect on a CPU)."""
    if recipe.train.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = recipe.train.tf32
        torch.backends.cudnn.allow_tf32 = recipe.train.tf32
    torch.backends.cudnn.benchmark = recipe.train.cudnn_benchmark


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


# -- the CPU allocator ----------------------------------------------------------------------------------------------
# Keep freed memory for reuse on glibc, so CPU training steps do not page-fault their activations anew.
#
# glibc's malloc serves big blocks (a batch, a conv layer's output) with mmap or returns the top of the heap to the
# kernel as soon as it is free. A training step frees the same few megabytes it will allocate again a millisecond
# later, so every step touches fresh pages, and each page costs a fault: on this project's 2-core VMs, about 1,700
# faults per LeNet step on 32x32 images (benchmarks/cpu_allocator.py measures the cost). jemalloc and tcmalloc avoid
# it, but need LD_PRELOAD; two `mallopt` calls get the same effect from inside the process: serve blocks up to
# 32 MiB from the heap, and keep up to 1 GiB of free heap instead of trimming it.
#
# The cost is that the process keeps its peak memory until it exits, which is what a training process does anyway.
# It changes nothing where it does not apply (macOS, Windows, musl, a preloaded allocator) or where the user chose
# their own thresholds through glibc's MALLOC_*_ environment variables.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def _preloaded_allocator() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))


def _user_thresholds() -> bool:
    return any(v in os.environ for v in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")) or \
        "malloc" in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Apply the glibc thresholds once per process; returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if _preloaded_allocator() or _user_thresholds():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
