"""`train.mixed_precision = "auto"` and `train.channels_last`: the fastest numerics the hardware runs natively.

bfloat16 autocast pays only where the hardware computes in bfloat16: CPUs with AVX-512 BF16 or AMX (recent Xeons,
and many laptops), ARM cores with the BF16 extension, and CUDA GPUs from Ampere on. Elsewhere torch emulates it,
which is slower than float32, so "auto" chooses float32 there. Convolutions in bfloat16 run fastest with the
channels-last (NHWC) memory format, so "auto" converts a model with a Conv2d when it chose bfloat16. The one
detection is `native_bf16`, which tests replace.
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

AUTO = "auto"


@functools.cache
def _cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's native bfloat16 features, as torch's own CPU probe (cpuinfo, every OS) reports them, else as Linux's
    /proc/cpuinfo lists them (x86 flags avx512_bf16 / amx_bf16, ARM feature bf16)."""
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx": "_is_amx_tile_supported"}
    found = [name for name, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()]
    if found or all(hasattr(torch.cpu, probe) for probe in probes.values()):
        return tuple(found)
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    words = set(text.split())
    return tuple(flag for flag in ("avx512_bf16", "amx_bf16", "bf16") if flag in words)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (not emulated): a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16, AMX or ARM's BF16 extension. Other devices (MPS) answer no."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(_cpu_bf16_flags())
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
    """Resolve "auto" on `device`: bf16 (and channels-last for convolutions) where it is native, else "no"."""
    if mixed_precision != AUTO:
        return Precision(mixed_precision, bool(channels_last), "")
    where = "GPU" if device.type == "cuda" else device.type.upper()
    if native_bf16(device):
        return Precision("bf16", channels_last, f"auto: this {where} computes bfloat16 natively")
    return Precision("no", bool(channels_last), f"auto: this {where} has no native bfloat16 (emulated is slower)")


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
