"""train.mixed_precision = "auto": bf16 only where the device computes bfloat16 fast (AMX, ARM BF16, recent GPUs),
float32 elsewhere, and channels-last convolutions on CPUs either way; the task's default; what the run says and
records."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from core_support import TOY_RECIPE
from torch import nn

from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.schema import Recipe
from deepcourse.training import precision
from deepcourse.training.accelerator import effective_settings


def toy(tmp_path: Path, *overrides: str) -> Recipe:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return load_recipe(path, ["train.device='cpu'", *overrides])


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_only_where_the_cpu_computes_it_natively(plugin_site: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    settings = effective_settings(toy(tmp_path, "train.mixed_precision='auto'"), warn=False)
    assert settings.mixed_precision == ("bf16" if native else "no")
    assert settings.precision is not None
    assert settings.precision.channels_last_for(conv_net()) is True  # on a CPU, convolutions channels-last either way
    assert settings.precision.channels_last_for(nn.Linear(2, 2)) is False
    model = precision.to_memory_format(conv_net(), settings.precision)
    assert precision.uses_channels_last(model) is True
    # an explicit choice is kept either way
    explicit = effective_settings(toy(tmp_path, "train.mixed_precision='auto'", "train.channels_last=false"))
    assert explicit.precision is not None and explicit.precision.channels_last_for(conv_net()) is False


ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: avx512f avx512_bf16\n\n"
ZEN5 = ZEN4.replace("cpu family\t: 25", "cpu family\t: 26")
INTEL = ZEN5.replace("AuthenticAMD", "GenuineIntel").replace("cpu family\t: 26", "cpu family\t: 6")


def test_native_bf16_reads_the_cpu_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """On x86: AMX, or AVX-512 BF16 on AMD's full-width units (Zen 5, family 26, and later). AVX-512 BF16 elsewhere
    computes bf16 convolutions slower than float32 (measured), so it says no."""
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    cases = [(INTEL, True, False, False), (ZEN4, True, False, False), (ZEN5, True, False, True),
             (ZEN5, False, False, False), (INTEL, False, True, True), (ZEN4, True, True, True),
             (INTEL, False, False, False), ("", True, False, False)]
    for cpuinfo, avx512_bf16, amx, expected in cases:
        precision._cpu_bf16_flags.cache_clear()
        precision._avx512_bf16.cache_clear()
        monkeypatch.setattr(precision, "_cpuinfo", lambda text=cpuinfo: text)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert precision.native_bf16(torch.device("cpu")) is expected, (cpuinfo[:60], avx512_bf16, amx)
        chosen = precision.choose("auto", None, torch.device("cpu"))
        assert chosen.mixed_precision == ("bf16" if expected else "no")
        assert ("AVX-512 BF16 but neither AMX" in chosen.reason) is (avx512_bf16 and not expected)
        assert ("(AMX)" in chosen.reason) is amx
        assert ("full-width units: AMD Zen 5" in chosen.reason) is (expected and not amx)
    monkeypatch.undo()
    for cached in (precision._cpu_bf16_flags, precision._avx512_bf16, precision._cpuinfo):
        cached.cache_clear()
    assert precision.native_bf16(torch.device("mps")) is False


def test_auto_on_a_gpu_without_bf16_keeps_the_default_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    chosen = precision.choose("auto", None, torch.device("cuda"))
    assert (chosen.mixed_precision, chosen.channels_last_for(conv_net())) == ("no", False)
    assert precision.choose("auto", True, torch.device("cuda")).channels_last_for(conv_net()) is True


def test_the_task_default_applies_when_nothing_says_otherwise(plugin_site: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from deepcourse.registry import TASKS

    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert effective_settings(toy(tmp_path)).mixed_precision == "no"  # the base Task's default
    monkeypatch.setattr(TASKS.get("toy-classification"), "default_precision", "auto")
    assert effective_settings(toy(tmp_path)).mixed_precision == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the launcher's word beats the task's default
    assert effective_settings(toy(tmp_path)).mixed_precision == "no"


def test_a_run_says_and_records_what_auto_chose(plugin_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import deepcourse

    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    with caplog.at_level("INFO"):
        result = deepcourse.run(_write(tmp_path), "train.mixed_precision='auto'", "train.epochs=1",
                                "train.device='cpu'", run_dir=tmp_path / "run", report=False)
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["mixed_precision"] == "bf16" and info["channels_last"] is False  # an MLP: nothing to lay out
    assert info["precision_reason"].startswith("auto: this CPU computes bfloat16 natively")
    assert f"deepcourse: precision bf16 autocast ({info['precision_reason']})" in caplog.text


def _write(tmp_path: Path) -> str:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return str(path)
