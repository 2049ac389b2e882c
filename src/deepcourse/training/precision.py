"""`train.mixed_precision = "auto"` and `train.channels_last`: the fastest numerics the hardware runs well.

bfloat16 autocast pays only where the hardware computes bfloat16 dot products fast: x86 CPUs with AMX (Xeons from
Sapphire Rapids on), ARM cores with the BF16 extension, CUDA GPUs from Ampere on, and some x86 CPUs with AVX-512 BF16
but no AMX. Which ones, the CPU's name does not tell: measured with benchmarks/cpu_precision.py, a training step of
airbench's net in bf16 + channels-last against float32 + channels-last was 1.87x faster on a Zen 5 EPYC (CPU family
26), 2.0x faster on a Zen 4 EPYC (family 25) and 1.2x *slower* on another x86 CPU with AVX-512 BF16. So on such a CPU
"auto" measures: a few training steps of a small convolution block in each precision (well under a second, once per
machine: the ratio is cached in $DEEPCOURSE_CACHE, default ~/.cache/deepcourse), and bf16 where it is at least
`BF16_MIN_SPEEDUP` times faster. Where torch emulates bfloat16 it is slower, so float32. On a CPU, convolutions run
channels-last (NHWC) at least as fast in either precision (oneDNN's preferred layout: 1.4-1.8x faster a step for
airbench's net in float32), so "auto" converts a model with a Conv2d on every CPU, and on a GPU when it chose
bfloat16. The one detection is `native_bf16`, which tests replace.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

AUTO = "auto"
BF16_MIN_SPEEDUP = 1.15  # bf16's numerics are worth trading for at least this much speed
CACHE_ENV = "DEEPCOURSE_CACHE"


@functools.cache
def _cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's bfloat16 matrix features: on x86, AMX as torch's own CPU probe (cpuinfo, every OS) reports it; else
    as Linux's /proc/cpuinfo lists them (x86 flag amx_bf16, ARM feature bf16). AVX-512 BF16 alone does not count."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None and _x86():
        return ("amx",) if probe() else ()
    words = set(_cpuinfo().split())
    return tuple(flag for flag in ("amx_bf16", "bf16") if flag in words)


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo's text ("" where there is none: not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@functools.cache
def _avx512_bf16() -> bool:
    """Whether the CPU has AVX-512 BF16 (fast on some CPUs, slower than float32 on others: measured)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return probe is not None and bool(probe())


def _conv_step(net: nn.Module, x: torch.Tensor, bf16: bool) -> float:
    """The seconds one training step (forward and backward) of `net` on `x` takes, in bf16 autocast or float32."""
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = net(x).float().square().mean()
    loss.backward()
    return time.perf_counter() - started


def measure_bf16_speedup(rounds: int = 5) -> float:
    """How many times faster this CPU trains a small convolution block (two 3x3 convolutions of 128 channels with
    batch norm, batch 32 at 16x16, channels-last: airbench's middle layers) in bf16 autocast than in float32. The two
    alternate, so that anything else running on the machine slows both alike, and each side keeps its fastest of
    `rounds` steps, after a warm-up step in which oneDNN builds its kernels. Under a second on two cores. The global
    random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.GELU(),
                            nn.Conv2d(128, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.GELU())
        net = net.to(memory_format=torch.channels_last)
        x = torch.randn(32, 128, 16, 16).contiguous(memory_format=torch.channels_last)
    fastest = {False: float("inf"), True: float("inf")}
    for round_ in range(rounds + 1):
        for bf16 in (False, True):
            seconds = _conv_step(net, x, bf16)
            if round_:  # round 0 warms up
                fastest[bf16] = min(fastest[bf16], seconds)
    return fastest[False] / fastest[True]


def _cache_file() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "deepcourse") / "cpu_bf16.json"


def _machine_key() -> str:
    """What the measurement depends on: the CPU (its name, family, model, stepping and flags), torch's version and
    the threads it uses."""
    first = _cpuinfo().split("\n\n", 1)[0]
    wanted = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags", "Features", "CPU part")
    fields = [line.strip() for line in first.splitlines() if line.split(":", 1)[0].strip() in wanted]
    text = "\n".join([*fields, platform.processor(), torch.__version__, str(torch.get_num_threads())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's measurements by machine key ({} where it is missing or damaged: measured again)."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _cached_speedup(path: Path, key: str) -> float | None:
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float)):
        return float(entry["speedup"])
    return None


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock beside the cache, so that processes started together (a sweep's runs, the ranks of
    `accelerate launch`) measure one at a time: one measures, the others then read its figure. Where no lock can be
    taken (no fcntl, a cache that cannot be written), it goes on without one."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")  # closed below, which unlocks
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock


def _bf16_speedup() -> float:
    """`measure_bf16_speedup` on this machine with the threads torch uses now, measured once and cached on disk, so
    that every run here, its resumption and the processes started beside it choose alike. A cache that cannot be
    read or written is measured around."""
    return _speedup_for(_machine_key())


@functools.cache
def _speedup_for(key: str) -> float:
    path = _cache_file()
    cached = _cached_speedup(path, key)
    if cached is not None:
        return cached
    with _cache_lock(path):
        cached = _cached_speedup(path, key)  # measured by a process that held the lock first
        if cached is not None:
            return cached
        speedup = round(measure_bf16_speedup(), 3)
        known = _read_cache(path)
        known[key] = {"speedup": speedup, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps(known, indent=1))
            os.replace(partial, path)
        except OSError:
            pass
    return speedup


def _cpu_bf16_source() -> str:
    """What makes this CPU's bfloat16 fast, in words ("" where it is not)."""
    flags = _cpu_bf16_flags()
    if "amx" in flags or "amx_bf16" in flags:
        return "AMX"
    if "bf16" in flags:
        return "ARM BF16"
    if _x86() and _avx512_bf16() and _bf16_speedup() >= BF16_MIN_SPEEDUP:
        return f"AVX-512 BF16, measured {_bf16_speedup():.1f}x faster than float32 here"
    return ""


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 fast (at full width, not emulated): a CUDA GPU that supports it, or a CPU
    with AMX, ARM's BF16 extension, or AVX-512 BF16 measured faster than float32 (`measure_bf16_speedup`). Other
    devices (MPS) answer no."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(_cpu_bf16_source())
    return False


@dataclass(frozen=True)
class Precision:
    """What a run computes in: the mixed precision Accelerate applies, whether the model is converted to
    channels-last (None: when the model has a Conv2d, because "auto" chose bf16), and why, in words."""

    mixed_precision: str
    channels_last: bool | None
    reason: str = ""

    def channels_last_for(self, model: nn.Module) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return any(isinstance(m, nn.Conv2d) for m in model.modules())


def choose(mixed_precision: str, channels_last: bool | None, device: torch.device) -> Precision:
    """Resolve "auto" on `device`: bf16 where it is fast, else "no"; channels-last for convolutions with bf16 and
    on every CPU (unless train.channels_last says otherwise)."""
    if mixed_precision != AUTO:
        return Precision(mixed_precision, bool(channels_last), "")
    where = "GPU" if device.type == "cuda" else device.type.upper()
    if native_bf16(device):
        how = _cpu_bf16_source() if device.type == "cpu" else ""
        how = f" ({how})" if how else ""
        return Precision("bf16", channels_last, f"auto: this {where} computes bfloat16 natively{how}")
    layout = channels_last if device.type == "cpu" else bool(channels_last)
    if device.type == "cpu" and _x86() and _avx512_bf16():
        return Precision("no", layout, f"auto: this CPU has AVX-512 BF16 but no AMX, and bfloat16 measured "
                                       f"{_bf16_speedup():.2f}x float32's speed here (needs {BF16_MIN_SPEEDUP}x)")
    return Precision("no", layout, f"auto: this {where} has no native bfloat16 (emulated is slower)")


def to_memory_format(model: nn.Module, precision: Precision) -> nn.Module:
    """The model converted to channels-last when the run computes so (parameters stay the same objects)."""
    if precision.channels_last_for(model):
        model = model.to(memory_format=torch.channels_last)
        _layout[model] = True
    return model


_layout: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def uses_channels_last(model: nn.Module) -> bool:
    """Whether `model`'s convolution kernels are laid out channels-last (by the engine, or by the task itself), so a
    task can give its inputs the same layout. Read from the first kernel whose layout is unambiguous, once per
    model (converting a model again after its first step is not seen)."""
    if model in _layout:
        return _layout[model]
    found = False
    for p in model.parameters():
        if p.ndim == 4 and not p.is_contiguous():
            found = p.is_contiguous(memory_format=torch.channels_last)
            break
    _layout[model] = found
    return found


def describe(precision: Precision, model: nn.Module) -> str:
    """The run's first line about its numerics."""
    shown = {"no": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(precision.mixed_precision,
                                                                                   precision.mixed_precision)
    layout = " + channels_last" if uses_channels_last(model) else ""
    return f"deepcourse: precision {shown}{layout}" + (f" ({precision.reason})" if precision.reason else "")
