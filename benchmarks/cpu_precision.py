"""What precision "auto" should choose on this CPU: a training step of two conv nets in four numerics, side by side.

For airbench's net (batch 512, the fast CIFAR recipes' model) and ResNet-18 with a CIFAR stem (batch 64), it times a
steady training step (SGD with momentum, after one warm-up step) in float32 and in bf16 autocast, each in the NCHW and
the channels-last memory format, in one process, one after the other, and reports seconds per step and each one's
speed against float32 NCHW. It also says what this CPU has (AMX, AVX-512 BF16), what "auto" chooses here and the
ratio its own short measurement finds now (float32 time / bf16 time of a small convolution block), so the choice and
the measurement can be checked against whole nets:

    python benchmarks/cpu_precision.py                 # about 2 minutes on 2 cores
    python benchmarks/cpu_precision.py --steps 2 --out /tmp/precision.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

VARIANTS = (("fp32 NCHW", False, False), ("fp32 channels_last", False, True), ("bf16 NCHW", True, False),
            ("bf16 channels_last", True, True))


def resnet18() -> nn.Module:
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem: no stride, no max-pool
    net.maxpool = nn.Identity()
    return net


def airbench() -> nn.Module:
    from deepcourse_vision.models.airbench import airbench as build

    return build(10, 3, 32)


def step_seconds(build: Any, batch: int, bf16: bool, channels_last: bool, steps: int) -> float:
    """Mean seconds of `steps` training steps after one warm-up step."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = build().to(memory_format=layout)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=layout)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(steps + 1):
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    return sum(times[1:]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from deepcourse.training.precision import choose, measure_bf16_speedup

    chosen = choose("auto", None, torch.device("cpu"))
    result: dict[str, Any] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
        "auto_chooses": {"mixed_precision": chosen.mixed_precision, "reason": chosen.reason},
        "probe_bf16_speedup_now": round(measure_bf16_speedup(), 3),  # "auto"'s measurement, made afresh
        "nets": {}}
    print(json.dumps({k: v for k, v in result.items() if k != "nets"}), flush=True)
    for name, build, batch in (("airbench", airbench, 512), ("resnet18", resnet18, 64)):
        rows = {label: step_seconds(build, batch, bf16, cl, args.steps) for label, bf16, cl in VARIANTS}
        base = rows["fp32 NCHW"]
        result["nets"][name] = {"batch": batch, **{label: {"s_per_step": round(s, 3), "speed": round(base / s, 2)}
                                                   for label, s in rows.items()}}
        for label, s in rows.items():
            print(f"{name:9s} batch {batch:4d}  {label:19s} {s:6.2f} s/step  {base / s:4.2f}x fp32 NCHW", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
