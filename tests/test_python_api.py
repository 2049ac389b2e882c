"""`deepcourse.run`, `deepcourse.evaluate` and `deepcourse.predict` from Python, with the toy plugin."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from core_support import TOY_RECIPE

import deepcourse
from deepcourse.api import RecipeError


@pytest.fixture(scope="module")
def toy_run(plugin_site, tmp_path_factory: pytest.TempPathFactory) -> deepcourse.RunResult:
    folder = tmp_path_factory.mktemp("api")
    recipe = folder / "toy.toml"
    recipe.write_text(TOY_RECIPE)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = deepcourse.run(str(recipe), "train.epochs=2", "train.threads=2", runs_root=str(folder / "runs"))
        assert torch.get_num_threads() == 1  # the run's train.threads did not leak into the caller
    finally:
        torch.set_num_threads(before)
    return result


def test_run_returns_the_run_directory_and_its_numbers(toy_run: deepcourse.RunResult) -> None:
    run = toy_run.run_dir
    assert isinstance(run, Path) and run.is_dir() and run.parent.name == "toy"
    assert toy_run.best == json.loads((run / "best" / "metrics.json").read_text())
    assert toy_run.summary == json.loads((run / "summary.json").read_text())
    assert toy_run.history == [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in toy_run.history if e["split"] == "validation"] == [1, 2]
    assert toy_run.report == run / "report" / "report.md" and toy_run.report.is_file()


def test_evaluate_gives_what_the_best_evaluation_gave(toy_run: deepcourse.RunResult) -> None:
    metrics = deepcourse.evaluate(toy_run.run_dir)
    assert metrics["split"] == "validation" and metrics["num_samples"] == 51
    assert metrics["accuracy"] == toy_run.best["accuracy"]
    assert metrics["loss"] == pytest.approx(toy_run.best["loss"], rel=1e-5)
    assert deepcourse.evaluate(str(toy_run.run_dir), "validation", checkpoint="latest")["num_samples"] == 51


def test_predict_returns_one_result_per_input(toy_run: deepcourse.RunResult) -> None:
    rows = deepcourse.predict(str(toy_run.run_dir), [",".join(["0.5"] * 8), ",".join(["-3"] * 8)])
    assert [r["input"] for r in rows] == [",".join(["0.5"] * 8), ",".join(["-3"] * 8)]
    assert all(r["class"] in (0, 1, 2) for r in rows)
    assert len(deepcourse.predict(toy_run.run_dir, ",".join(["1"] * 8))) == 1  # one input, not its characters


def test_a_recipe_as_a_dict(plugin_site, tmp_path: Path) -> None:
    data = tomllib.loads(TOY_RECIPE)
    result = deepcourse.run(data, "train.max_steps=2", runs_root=tmp_path, report=False)
    assert result.summary["steps"] == 2 and result.report is None
    assert not (result.run_dir / "report").exists()


def test_recipe_errors_print_every_problem(plugin_site, tmp_path: Path) -> None:
    recipe = tmp_path / "toy.toml"
    recipe.write_text(TOY_RECIPE)
    with pytest.raises(RecipeError) as info:
        deepcourse.run(recipe, "train.epocs=2", "model.hiden=3", runs_root=tmp_path / "runs")
    text = str(info.value)
    assert "train.epocs: unknown key. Did you mean 'epochs'?" in text
    assert "model.hiden: unknown key. Did you mean 'hidden'?" in text
    assert not (tmp_path / "runs").exists()


def test_the_package_exports_only_the_python_api() -> None:
    assert set(deepcourse.__all__) == {"__version__", "run", "evaluate", "predict", "explain", "lr_find", "RunResult"}
    with pytest.raises(AttributeError):
        deepcourse.fit  # noqa: B018 - internals stay internal


def test_runs_one_after_another_each_compile_as_their_recipe_says(plugin_site, tmp_path: Path) -> None:
    """Accelerate keeps its first Accelerator's torch.compile choice process-wide: an eager run and then a compiled
    one of the same precision (a notebook, a sweep, the GPU check) trained eager twice."""
    from torch._dynamo.utils import counters

    recipe = tmp_path / "toy.toml"
    recipe.write_text(TOY_RECIPE)
    graphs = []
    for compiled in ("false", "{backend = 'eager'}", "false"):
        counters.clear()
        result = deepcourse.run(str(recipe), "train.max_steps=3", f"train.compile={compiled}", report=False,
                                runs_root=tmp_path / "runs")
        graphs.append(counters["stats"]["unique_graphs"])
        assert json.loads((result.run_dir / "run.json").read_text())["compile"] == \
            (None if compiled == "false" else {"backend": "eager", "mode": None, "fullgraph": False, "dynamic": None})
    assert graphs[0] == 0 and graphs[1] > 0 and graphs[2] == 0
