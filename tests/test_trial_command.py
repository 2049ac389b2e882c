"""The one command line of a study's runs (`deepcourse.studies.study.run_command`), read without running it: a new
trial starts from the recipe with its parameters, a retried one resumes its run directory, and the pruning callback
joins the callbacks the recipe declares in both."""
from __future__ import annotations

from pathlib import Path

from core_support import TOY_RECIPE

OWN = "callbacks = [{name = 'pause_at', step = 2, seconds = 0.0}]"


def callbacks_of(cmd: list[str]) -> list[dict]:
    from deepcourse.recipe.overrides import parse_override

    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set" and cmd[i + 1].startswith("train.callbacks=")]
    assert len(sets) == 1, cmd
    return parse_override(sets[0])[1]


def test_pruning_joins_the_recipes_callbacks_in_a_new_and_in_a_retried_trial(tmp_path: Path, plugin_site) -> None:
    from deepcourse.recipe.load import load_recipe
    from deepcourse.studies.spec import StudySpec
    from deepcourse.studies.study import run_command

    recipe = tmp_path / "toy.toml"
    recipe.write_text(TOY_RECIPE.replace("progress = false\n", f"progress = false\n{OWN}\n"))
    spec = StudySpec(kind="tune", folder=tmp_path, recipe=recipe, name="s", storage=str(tmp_path / "study.log"),
                     monitor="accuracy", direction="maximize", trials=2, overrides=["train.epochs=1"],
                     pruner="median")
    pruning = {"name": "optuna_pruning", "storage": spec.storage, "study": "s", "trial": 7, "monitor": "accuracy"}

    new = run_command(spec, tmp_path / "trial-0000", ["model.hidden=8"], [pruning])
    assert new[3:6] == ["run", str(recipe), "--run-dir"] and new[-1] == "--no-report"
    assert "train.epochs=1" in new and "model.hidden=8" in new
    assert [cb["name"] for cb in callbacks_of(new)] == ["pause_at", "optuna_pruning"]

    # a retry: its run directory has a checkpoint, and a recipe.toml with its first try's pruning callback
    run = tmp_path / "trial-0001"
    (run / "checkpoints" / "step-000000004").mkdir(parents=True)
    (run / "checkpoints" / "step-000000004" / "trainer_state.json").write_text("{}")
    first = "train.callbacks=[{name = 'pause_at', step = 2, seconds = 0.0}, {name = 'optuna_pruning', " \
            f"storage = '{spec.storage}', study = 's', trial = 3, monitor = 'accuracy'}}]"
    (run / "recipe.toml").write_text(load_recipe(recipe, [first]).to_toml())
    retried = run_command(spec, run, ["model.hidden=8"], [pruning])
    assert retried[3:6] == ["run", "--resume", str(run)]
    assert callbacks_of(retried) == [{"name": "pause_at", "step": 2, "seconds": 0.0}, pruning]

    assert not any(a.startswith("train.callbacks=") for a in run_command(spec, tmp_path / "seed4", ["seed=4"]))
