"""`train.mixed_precision = "auto"` and `train.channels_last`: the fastest numerics the hardware runs well.

bfloat16 autocast pays only where the hardware computes bfloat16 dot products at full width: x86 CPUs with AMX
(Xeons from Sapphire Rapids on), AMD CPUs from Zen 5 on (AVX-512 BF16 on full 512-bit units), ARM cores with the BF16
extension, and CUDA GPUs from Ampere on. Measured with benchmarks/cpu_precision.py, a training step in bf16 +
channels-last against float32 + channels-last: on a Zen 5 EPYC (CPU family 26, no AMX) 1.87x faster for airbench's
net and 1.7x for ResNet-18; on an earlier x86 CPU with AVX-512 BF16 but neither AMX nor full-width units, 1.2x and
1.3x *slower*. Where torch emulates bfloat16 it is slower still. So "auto" chooses bfloat16 on AMX, Zen 5 and later,
ARM BF16 and those GPUs, float32 elsewhere. On a CPU, convolutions run channels-last (NHWC) at least as fast in either
precision (oneDNN's preferred layout: 1.5-1.8x faster a step for airbench's net in float32), so "auto" converts a
model with a Conv2d on every CPU, and on a GPU when it chose bfloat16. The one detection is `native_bf16`, which
tests replace.
"""
from __future__ import annotations

import functools
import platform
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

AUTO = "auto"


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


ZEN5_FAMILY = 0x1A  # AMD's CPU family of Zen 5 (EPYC 9005, Ryzen 9000): AVX-512 on full 512-bit units


def _amd_family() -> int:
    """The CPU family /proc/cpuinfo gives an AMD CPU (0 for other vendors, or where it says nothing)."""
    first = _cpuinfo().split("\n\n", 1)[0]  # the first processor's block
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
    if fields.get("vendor_id") != "AuthenticAMD":
        return 0
    family = fields.get("cpu family", "0")
    return int(family) if family.isdigit() else 0


@functools.cache
def _avx512_bf16() -> bool:
    """Whether the CPU has AVX-512 BF16 (counted on Zen 5 and later; else said in the reason for float32)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return probe is not None and bool(probe())


def _full_width_avx512_bf16() -> bool:
    """AVX-512 BF16 on full 512-bit units: AMD from Zen 5 on (Zen 4 splits each 512-bit operation in two)."""
    return _x86() and _avx512_bf16() and _amd_family() >= ZEN5_FAMILY


def _cpu_bf16_source() -> str:
    """What makes this CPU's bfloat16 fast, in words ("" where it is not)."""
    flags = _cpu_bf16_flags()
    if "amx" in flags or "amx_bf16" in flags:
        return "AMX"
    if _full_width_avx512_bf16():
        return "AVX-512 BF16 on full-width units: AMD Zen 5 or later"
    return "ARM BF16" if "bf16" in flags else ""


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 fast (at full width, not emulated): a CUDA GPU that supports it, or a CPU
    with AMX, AMD's Zen 5 or later, or ARM's BF16 extension. Other devices (MPS, other x86 CPUs with AVX-512 BF16)
    answer no."""
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
    if device.type == "cpu" and _avx512_bf16():
        return Precision("no", layout, "auto: this CPU has AVX-512 BF16 but neither AMX nor full-width "
                                       "units (Zen 5), where bfloat16 convolutions are slower than float32")
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
