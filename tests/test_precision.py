"""train.mixed_precision = "auto": bf16 only where the device computes bfloat16 fast (AMX, ARM BF16, recent GPUs),
float32 elsewhere, and channels-last convolutions on CPUs either way; the task's default; what the run says and
records."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
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


INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nflags\t\t: avx512f avx512_bf16\n\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16\n\n"


@pytest.fixture
def fresh_probes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The CPU probes forgotten before and after, and the measurement's cache in tmp_path."""
    cached = (precision._cpu_bf16_flags, precision._avx512_bf16, precision._cpuinfo, precision._speedup_for)
    for probe in cached:
        probe.cache_clear()
    monkeypatch.setenv("DEEPCOURSE_CACHE", str(tmp_path / "cache"))
    yield
    for probe in cached:
        probe.cache_clear()


def test_native_bf16_reads_the_cpu_probes(monkeypatch: pytest.MonkeyPatch, fresh_probes: None) -> None:
    """On x86: AMX says yes; AVX-512 BF16 alone says what a measured step says (twice as fast as float32 on some
    CPUs, slower on others); nothing else says no. ARM's BF16 feature says yes."""
    cases = [  # machine, cpuinfo, AVX-512 BF16, AMX, measured speedup (None: must not be measured), expected
        ("x86_64", INTEL, True, False, 1.9, True), ("x86_64", INTEL, True, False, 0.85, False),
        ("x86_64", INTEL, True, False, 1.1, False), ("x86_64", INTEL, False, True, None, True),
        ("x86_64", INTEL, True, True, None, True), ("x86_64", INTEL, False, False, None, False),
        ("x86_64", "", False, False, None, False), ("aarch64", ARM, False, False, None, True),
        ("aarch64", "", False, False, None, False)]
    for machine, cpuinfo, avx512_bf16, amx, speedup, expected in cases:
        for probe in (precision._cpu_bf16_flags, precision._avx512_bf16, precision._speedup_for):
            probe.cache_clear()
        precision._cache_file().unlink(missing_ok=True)  # each case another machine
        measured: list[bool] = []

        def measure(rounds: int = 5, speedup: float | None = speedup, measured: list[bool] = measured) -> float:
            assert speedup is not None, "measured where the CPU's features already decide"
            measured.append(True)
            return speedup

        monkeypatch.setattr(precision.platform, "machine", lambda m=machine: m)
        monkeypatch.setattr(precision, "_cpuinfo", lambda text=cpuinfo: text)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(precision, "measure_bf16_speedup", measure)
        case = (machine, cpuinfo[:40], avx512_bf16, amx, speedup)
        assert precision.native_bf16(torch.device("cpu")) is expected, case
        chosen = precision.choose("auto", None, torch.device("cpu"))
        assert chosen.mixed_precision == ("bf16" if expected else "no"), case
        assert len(measured) == (speedup is not None), case  # once, however often asked
        if speedup is not None:
            verdict = f"measured {speedup:.1f}x faster" if expected else f"measured {speedup:.2f}x float32's speed"
            assert verdict in chosen.reason, (case, chosen.reason)
        assert ("(AMX)" in chosen.reason) is amx, case
        assert ("(ARM BF16)" in chosen.reason) is (machine == "aarch64" and expected), case
    assert precision.native_bf16(torch.device("mps")) is False


def test_the_measurement_is_real_cached_per_machine_and_leaves_the_random_state(
        monkeypatch: pytest.MonkeyPatch, fresh_probes: None, tmp_path: Path) -> None:
    before = torch.get_rng_state()
    speedup = precision.measure_bf16_speedup(rounds=1)
    assert 0.05 < speedup < 50 and torch.equal(torch.get_rng_state(), before)

    calls: list[int] = []
    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda rounds=5: calls.append(1) or 1.7)
    assert precision._bf16_speedup() == 1.7
    cache = tmp_path / "cache" / "cpu_bf16.json"
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["speedup"] == 1.7 and entry["threads"] == torch.get_num_threads()
    precision._speedup_for.cache_clear()  # a new process on the same machine reads it back
    assert precision._bf16_speedup() == 1.7 and calls == [1]

    threads = torch.get_num_threads()
    try:  # another thread count is another measurement, kept beside the first (in this process too)
        torch.set_num_threads(threads + 1)
        assert precision._bf16_speedup() == 1.7 and calls == [1, 1]
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(cache.read_text())) == 2

    for damaged in ("{not json", "[1, 2]", json.dumps({precision._machine_key(): {"speedup": "fast"}})):
        cache.write_text(damaged)  # measured again, and the cache mended
        precision._speedup_for.cache_clear()
        assert precision._bf16_speedup() == 1.7
        assert json.loads(cache.read_text())[precision._machine_key()]["speedup"] == 1.7
    assert len(calls) == 5

    assert not list(cache.parent.glob("*.tmp"))
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("DEEPCOURSE_CACHE", str(blocked / "cache"))  # cannot be written: measured, and on it goes
    precision._speedup_for.cache_clear()
    assert precision._bf16_speedup() == 1.7 and len(calls) == 6


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


def _waiting_on(lock_file: Path) -> bool:
    """Whether some process or thread is blocked waiting for a lock on `lock_file` (Linux's /proc/locks marks a
    waiter with "->")."""
    inode = f":{lock_file.stat().st_ino} "
    return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="watches the lock through Linux's /proc/locks")
def test_processes_started_together_measure_one_at_a_time(monkeypatch: pytest.MonkeyPatch, fresh_probes: None) -> None:
    """A run that finds no figure while another process holds the lock (measuring) waits for it, then reads that
    process's figure instead of measuring beside it. The moment is the lock's: the other process writes its figure
    once the run is seen blocked on the lock (or the run has finished, without waiting: the failure)."""
    import fcntl

    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda rounds=5: 0.5)
    cache = precision._cache_file()
    cache.parent.mkdir(parents=True)
    lock_file = cache.with_suffix(".lock")
    result: list[float] = []
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is measuring
        run = threading.Thread(target=lambda: result.append(precision._bf16_speedup()), daemon=True)
        run.start()
        while run.is_alive() and not _waiting_on(lock_file):
            run.join(0.01)
        assert run.is_alive(), f"the run did not wait for the lock: {result}"
        cache.write_text(json.dumps({precision._machine_key(): {"speedup": 1.9}}))  # the other process's figure
    run.join(60)
    assert result == [1.9]
