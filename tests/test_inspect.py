"""The core of looking inside a network: the LR range test (state restored exactly, the good region found on a
problem whose answer is known), `deepcourse lr-find` on a toy recipe, the learning-rate figure's replayed schedule,
and the output folder every inspecting command writes through."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from deepcourse.cli.main import main
from deepcourse.rundir.files import atomic_write
from deepcourse.training.lrfind import lr_range_test, suggest


def least_squares(seed: int = 0) -> tuple[torch.nn.Linear, list[tuple[torch.Tensor, torch.Tensor]]]:
    """y = x w* + noise with x whitened: the mean squared error's Hessian is 2I, so plain SGD converges for rates
    below 1 (fastest at 0.5) and diverges above."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4096, 8, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    y = x @ torch.randn(8, 1, generator=g) + 0.5 * torch.randn(4096, 1, generator=g)
    model = torch.nn.Linear(8, 1, bias=False)
    batches = [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(x), 256)]
    return model, batches


def test_the_range_test_finds_the_good_region_and_restores_everything() -> None:
    torch.manual_seed(0)
    model, batches = least_squares()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    model(batches[0][0]).pow(2).mean().backward()
    optimizer.step()  # some momentum state, which must survive the test
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = optimizer.state[model.weight]["momentum_buffer"].clone()
    rng = torch.get_rng_state()
    for group in optimizer.param_groups:
        group["momentum"] = 0.0  # plain SGD for the test itself, so the stable range is known
    state = optimizer.state_dict()

    result = lr_range_test(model, optimizer, batches, lambda b: (model(b[0]) - b[1]).pow(2).mean(),
                           start_lr=1e-5, end_lr=10.0, num_steps=100)
    assert result.suggestion is not None and 0.01 <= result.suggestion <= 1.0, result.summary()
    assert "diverged" in result.stopped and 1.0 < result.lrs[-1] < 10.0  # it stops once the rate is past any use
    assert 0.01 < result.min_loss_lr / 10 < 1.0  # fastai's older rule lands in the good region too
    lowest = min(range(len(result.losses)), key=result.losses.__getitem__)
    assert 0.05 < result.lrs[lowest] < 1.5 and result.losses[lowest] < 0.05 * result.losses[0]  # near the floor
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # exactly, not approximately
    assert torch.equal(optimizer.state[model.weight]["momentum_buffer"], momentum)
    assert optimizer.state_dict()["param_groups"] == state["param_groups"]  # the rates are the optimizer's again
    assert model.weight.grad is None and torch.equal(torch.get_rng_state(), rng)


def test_the_range_test_restores_the_model_after_an_error() -> None:
    model, batches = least_squares()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    calls = []

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("a failing step")
        return (model(batch[0]) - batch[1]).pow(2).mean()

    with pytest.raises(RuntimeError):
        lr_range_test(model, optimizer, batches, loss_of, start_lr=0.1, end_lr=1.0, num_steps=20)
    assert torch.equal(model.weight, before) and optimizer.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize(("start", "end", "message"), [
    (1e-7, float("nan"), "--end-lr nan: a learning rate is a finite number above 0"),
    (1e-7, float("inf"), "--end-lr inf: a learning rate is a finite number above 0"),
    (float("nan"), 1.0, "--start-lr nan: a learning rate is a finite number above 0"),
    (0.0, 1.0, "--start-lr 0: a learning rate is a finite number above 0"),
    (1.0, 1.0, "--start-lr 1 must be below --end-lr 1"),
    (5e-324, 1e308, "the range is wider than a float holds")])
def test_the_range_test_refuses_rates_it_cannot_step_through(start: float, end: float, message: str) -> None:
    """Called from Python as from the command line: nan passes `0 < rate` and `start < end` (every comparison with
    it is false), and the test then ran two steps at rate nan and wrote their figure."""
    from deepcourse.errors import UserError

    model, batches = least_squares()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("+", r"\+")):
        lr_range_test(model, optimizer, batches, lambda b: (model(b[0]) - b[1]).pow(2).mean(), start_lr=start,
                      end_lr=end, num_steps=20)
    assert optimizer.param_groups[0]["lr"] == 0.1 and model.weight.grad is None


def test_the_suggestion_is_the_steepest_fall_before_the_minimum() -> None:
    lrs = [10 ** (-6 + i * 0.1) for i in range(60)]
    loss = [2.0] * 20 + [2.0 - 0.05 * i for i in range(1, 21)] + [1.0 + 0.2 * i for i in range(20)]
    loss[30] -= 0.3  # the steepest single fall
    suggestion, lowest = suggest(lrs, loss)
    assert suggestion == pytest.approx(lrs[30]) or suggestion == pytest.approx(lrs[29])
    assert lowest == pytest.approx(lrs[39])  # the first of the lowest values
    assert suggest(lrs[:8], loss[:8]) == (None, None)  # too few steps to say


def test_lr_find_command_writes_its_folder_and_nothing_else(toy_recipe: Path, tmp_path: Path, plugin_site,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["lr-find", str(toy_recipe), "--steps", "40", "--json", "-o", "found"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert len(result["lrs"]) <= 40 and result["lrs"][0] == pytest.approx(1e-7)
    assert sorted(p.name for p in (tmp_path / "found").iterdir()) == ["lr_find.csv", "lr_find.json", "lr_find.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["found", "toy.toml"]  # no run directory, no temporaries
    rows = (tmp_path / "found" / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,smoothed_loss" and len(rows) == len(result["lrs"]) + 1
    saved = json.loads((tmp_path / "found" / "lr_find.json").read_text())
    assert saved["suggestion"] == result["suggestion"] and saved["recipe"] == "toy"
    out = CliRunner().invoke(main, ["lr-find", str(toy_recipe), "--steps", "40"])  # default folder: lr-find/<name>
    assert out.exit_code == 0 and "suggested learning rate" in out.stdout
    assert (tmp_path / "lr-find" / "toy" / "lr_find.png").stat().st_size > 10_000


def test_the_learning_rate_figure_replays_the_schedule_with_its_warm_up(toy_recipe: Path, tmp_path: Path,
                                                                         plugin_site) -> None:
    from deepcourse.results.report import replay_schedule
    from deepcourse.rundir.layout import read_run

    run = tmp_path / "run"
    out = CliRunner().invoke(main, ["run", str(toy_recipe), "--run-dir", str(run), "--set", "train.epochs=3",
                                    "--set", "train.log_every=4", "--set", "scheduler.name='cosine'",
                                    "--set", "scheduler.warmup_steps=6"])
    assert out.exit_code == 0, out.output
    data = read_run(run)
    rates = replay_schedule(data)
    steps, logged = data.step_series("lr")
    assert rates is not None and len(rates) == data.summary["steps"] and len(logged) < len(rates)
    assert all(rates[s] == pytest.approx(v) for s, v in zip(steps, logged) if s < len(rates))  # next step's rate
    assert rates[:6] == pytest.approx([max(rates) * k / 6 for k in range(1, 7)])  # the warm-up: 6 steps to the peak
    assert rates[7] < rates[6] == rates[5]  # then the cosine decay from the peak
    md = (run / "report" / "report.md").read_text()
    assert "every optimizer step, replayed" in md and "the warm-up, the first 6 steps" in md
    data.rows[0]["lr"] *= 2  # a log the replay does not match: the figure shows the logged rates alone
    assert replay_schedule(data) is None


def test_a_staged_folder_leaves_nothing_on_an_error_and_other_files_alone(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "a" / "b", merge=True) as tmp:
        (tmp / "x.png").write_text("half")
        raise RuntimeError("failed")
    assert list(tmp_path.iterdir()) == []  # neither the files nor the folders above them
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("mine")
    (tmp_path / "keep" / "x.png").write_text("old")
    with atomic_write(tmp_path / "keep", merge=True) as tmp:
        (tmp / "x.png").write_text("new")
    assert {p.name: p.read_text() for p in (tmp_path / "keep").iterdir()} == {"mine.txt": "mine", "x.png": "new"}
