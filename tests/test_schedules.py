"""Every schedule works for a run of any length: a smoke test of a few steps never dies inside torch."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from deepcourse.api import SCHEDULERS, call_builder, load_recipe, shipped_recipes
from deepcourse.errors import RecipeWarning
from deepcourse.studies.sweep import toml_literal
from deepcourse.testing import cli

SHORT = [*range(1, 11), 17]


def shipped_schedule_tables() -> list[dict]:
    tables = {repr(sorted(r.scheduler.model_dump().items())): r.scheduler.model_dump()
              for r in (load_recipe(path) for path in shipped_recipes().values())}
    return [*tables.values(), *({"name": name} for name in SCHEDULERS.names())]


def learning_rates(table: dict, total_steps: int, steps_per_epoch: int) -> list[float]:
    """The lr before each of `total_steps` optimizer steps, the schedule stepped as the engine steps it."""
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.2, momentum=0.9)
    options = {k: v for k, v in table.items() if k != "name"}
    scheduler = call_builder(SCHEDULERS.get(table["name"]), options, loc="scheduler", provided={
        "optimizer": optimizer, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "epochs": max(1, total_steps // steps_per_epoch), "monitor_mode": "max"})
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step(0.5) if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) else scheduler.step()
    return rates


@pytest.mark.parametrize("table", shipped_schedule_tables(), ids=lambda t: "-".join(f"{k}={v}" for k, v in t.items()))
def test_every_schedule_fits_a_short_run(table: dict) -> None:
    for total in SHORT:
        for per_epoch in (1, 3):
            rates = learning_rates(table, total, per_epoch)
            assert len(rates) == total and all(math.isfinite(r) and 0 <= r <= 0.2 + 1e-12 for r in rates), \
                (total, per_epoch, rates)


@pytest.mark.parametrize("total", [2, 3, 4, 5, 10])
@pytest.mark.parametrize("three_phase", [False, True])
def test_a_short_one_cycle_still_rises_and_falls(total: int, three_phase: bool) -> None:
    """pct_start 0.25 gives the warm-up less than one step below 8 steps: it is lengthened to one (or, below 3
    steps, half a step), with a warning naming the key; from 8 steps on the schedule is as written."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rates = learning_rates({"name": "onecycle", "pct_start": 0.25, "three_phase": three_phase}, total, 1)
    if total >= 4 or (total == 3 and not three_phase):
        assert rates[1] > rates[0]  # at least one step rises
    assert rates[-1] < max(rates[:-1]) or total == 2
    said = [str(w.message) for w in caught if issubclass(w.category, RecipeWarning)]
    moved = any(f"scheduler.pct_start = 0.25 does not fit a run of {total} optimizer steps" in m for m in said)
    assert moved == (total < 8)


def test_a_long_one_cycle_is_torchs_own(recwarn: pytest.WarningsRecorder) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([param], lr=0.2, momentum=0.9), max_lr=0.2,
                                                    total_steps=100, pct_start=0.25)
    expected = []
    for _ in range(100):
        expected.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert learning_rates({"name": "onecycle", "pct_start": 0.25}, 100, 10) == pytest.approx(expected)
    assert not [w for w in recwarn if issubclass(w.category, RecipeWarning)]


def test_warm_up_longer_than_the_run_is_said() -> None:
    with pytest.warns(RecipeWarning, match=r"scheduler.warmup_epochs makes a warm-up of 50 steps, longer than the "
                                           r"run \(4 optimizer steps\)"):
        learning_rates({"name": "cosine", "warmup_epochs": 1.0}, 4, 50)


def test_the_headline_schedule_on_a_four_step_smoke_run(tmp_path: Path, toy_recipe: Path, plugin_site) -> None:
    """cifar_resnet's optimizer and one-cycle schedule (pct_start 0.25) on 4 optimizer steps: the user's smoke test
    that died with ZeroDivisionError inside OneCycleLR."""
    headline = load_recipe(shipped_recipes()["cifar_resnet"])
    tables = headline.to_dict()
    sets = [f"optimizer={toml_literal(tables['optimizer'])}", f"scheduler={toml_literal(tables['scheduler'])}",
            "data.train_samples=64", "train.epochs=1"]
    out = CliRunner().invoke(cli, ["run", str(toy_recipe), "--run-dir", str(tmp_path / "run"), "--no-report",
                                   *[a for s in sets for a in ("--set", s)]])
    assert out.exit_code == 0, out.output
    assert "scheduler.pct_start = 0.25 does not fit a run of 4 optimizer steps" in out.stderr
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()



def test_the_triangle_is_airbenchs_schedule_step_for_step() -> None:
    """The fast CIFAR recipes' schedule: from 0.2 x lr up to lr over 23% of the steps, then down to 0.07 x lr, the
    factor of each step as the airbench94 reference loop computes it (benchmarks/cifar_airbench_loop.py)."""
    total = 436
    warm = int(total * 0.23)

    def reference(step: int) -> float:
        if step < warm:
            return 0.2 * (1 - step / warm) + 1.0 * (step / warm)
        frac = (step - warm) / (total - warm)
        return 1.0 * (1 - frac) + 0.07 * frac

    rates = learning_rates({"name": "triangle"}, total, 44)
    assert rates == pytest.approx([0.2 * reference(s) for s in range(total)])
    assert rates[warm] == pytest.approx(0.2) and rates[0] == pytest.approx(0.04)
