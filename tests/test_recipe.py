from __future__ import annotations

from pathlib import Path

import pytest
from core_support import TOY_RECIPE, run_cli

from deepcourse.errors import RecipeError, UserError
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.overrides import apply_overrides, parse_override


@pytest.fixture(autouse=True)
def _plugins(plugin_site) -> None:
    """Every test here needs the toy plugin registered."""


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.problems


def test_valid_recipe_resolves_with_builder_defaults(toy_recipe: Path) -> None:
    recipe = load_recipe(toy_recipe)
    data = recipe.to_dict()
    assert data["model"] == {"name": "toy_mlp", "dropout": 0.3, "hidden": 32}  # only what the recipe sets
    assert data["optimizer"]["nesterov"] is False  # builder default made visible
    assert data["train"]["epochs"] == 3 and data["seed"] == 3
    again = load_recipe(data=__import__("tomllib").loads(recipe.to_toml()))
    assert again.to_dict() == data  # the written recipe reproduces itself


def test_unknown_keys_everywhere_with_suggestions(tmp_path: Path) -> None:
    text = TOY_RECIPE.replace("epochs = 3", "epocs = 3").replace("hidden = 32", "hiden = 32")
    text = text.replace('name = "toy"\n', 'name = "toy"\nseeed = 1\n', 1)
    text = text.replace("lr = 0.05", "lr = 0.05\nmomentun = 0.9")
    found = problems_of(write(tmp_path, text))
    assert "train.epocs: unknown key. Did you mean 'epochs'?" in found
    assert "model.hiden: unknown key. Did you mean 'hidden'?" in found
    assert "seeed: unknown key. Did you mean 'seed'?" in found
    assert any(p.startswith("optimizer.momentun: unknown key. Did you mean 'momentum'?") for p in found)
    assert len(found) == 4  # all at once


def test_wrong_types_and_ranges(tmp_path: Path) -> None:
    text = TOY_RECIPE.replace("epochs = 3", 'epochs = "ten"').replace("lr = 0.05", "lr = -1.0")
    text = text.replace("batch_size = 16", "batch_size = 0").replace("dropout = 0.3", "dropout = 1.5")
    found = problems_of(write(tmp_path, text))
    joined = "\n".join(found)
    assert "train.epochs: input should be a valid integer (got 'ten')" in joined
    assert "data.batch_size: input should be greater than 0" in joined
    # core errors are reported first; builder tables are checked once the core keys are valid
    fixed = text.replace('epochs = "ten"', "epochs = 3").replace("batch_size = 0", "batch_size = 16")
    found = problems_of(write(tmp_path, fixed))
    assert "optimizer.lr: input should be greater than 0 (got -1.0)" in found
    assert "model.dropout: input should be less than 1 (got 1.5)" in found


def test_unknown_component_names(tmp_path: Path) -> None:
    text = TOY_RECIPE.replace('name = "toy_mlp"', 'name = "toy_mpl"').replace('name = "sgd"', 'name = "sdg"')
    found = problems_of(write(tmp_path, text))
    assert any(p.startswith("model.name: unknown model 'toy_mpl'. Did you mean 'toy_mlp'?") for p in found)
    assert any(p.startswith("optimizer.name: unknown optimizer 'sdg'. Did you mean 'sgd'?") for p in found)


def test_missing_required_section(tmp_path: Path) -> None:
    text = TOY_RECIPE.replace('[model]\nname = "toy_mlp"\nhidden = 32\ndropout = 0.3\n', "")
    assert "model: required" in problems_of(write(tmp_path, text))


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, TOY_RECIPE.replace("epochs = 3", "epochs = = 3"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}:21:10: invalid TOML: Invalid value")


def test_overrides_parse_toml_literals() -> None:
    assert parse_override("optimizer.lr=0.01") == (["optimizer", "lr"], 0.01)
    assert parse_override("train.trackers=['tensorboard']") == (["train", "trackers"], ["tensorboard"])
    assert parse_override("model.name=resnet18") == (["model", "name"], "resnet18")
    assert parse_override('model.name="x y"') == (["model", "name"], "x y")
    assert parse_override("train.early_stopping={patience = 2}") == (["train", "early_stopping"], {"patience": 2})
    for bad in ("train.epochs", "train..epochs=1", "train.epochs=[1,", "=3", "a.b=1.2.3"):
        with pytest.raises(RecipeError):
            parse_override(bad)
    with pytest.raises(RecipeError, match="'train.epochs' is a value, not a table"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_overrides_are_validated_like_the_file(toy_recipe: Path) -> None:
    recipe = load_recipe(toy_recipe, ["train.epochs=7", "optimizer.lr=0.2", "model.hidden=8"])
    assert (recipe.train.epochs, recipe.optimizer.options["lr"], recipe.model.options["hidden"]) == (7, 0.2, 8)
    assert "train.epochs: input should be greater than 0 (got 0)" in problems_of(toy_recipe, ("train.epochs=0",))


def test_extends_merges_tables_and_replaces_lists(tmp_path: Path) -> None:
    base = write(tmp_path, TOY_RECIPE.replace("[train]\n", "[train]\ntrackers = ['tensorboard']\n"), "base.toml")
    child = write(tmp_path, f'extends = "{base.name}"\n[model]\nhidden = 8\n[train]\ntrackers = []\n', "child.toml")
    recipe = load_recipe(child)
    assert recipe.name == "child"  # the child is its own experiment
    assert recipe.model.name == "toy_mlp" and recipe.model.options == {"hidden": 8, "dropout": 0.3}
    assert recipe.train.trackers == [] and recipe.train.epochs == 3


def test_extends_cycle_and_missing_base(tmp_path: Path) -> None:
    write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.toml")
    write(tmp_path, 'extends = "nope.toml"\n', "c.toml")
    with pytest.raises(RecipeError, match="base recipe 'nope.toml' not found"):
        load_recipe(tmp_path / "c.toml")


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.toml")


def test_cli_check_exit_codes(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    ok = run_cli(["check", str(toy_recipe), "--set", "train.epochs=5"], cli_env)
    assert ok.returncode == 0, ok.stderr
    assert "epochs = 5" in ok.stdout and '[model]\nname = "toy_mlp"' in ok.stdout
    bad = write(tmp_path, TOY_RECIPE.replace("hidden = 32", "widht = 32"))
    out = run_cli(["check", str(bad)], cli_env)
    assert out.returncode == 2
    assert "model.widht: unknown key." in out.stderr and "Traceback" not in out.stderr
    out = run_cli(["check", str(toy_recipe), "--set", "train.epochs=[1,"], cli_env)
    assert out.returncode == 2 and "--set train.epochs=[1," in out.stderr


def _shipped() -> list[str]:
    from deepcourse.api import shipped_recipes

    return sorted(shipped_recipes())


@pytest.mark.parametrize("name", _shipped())
def test_every_shipped_recipe_resumes_with_itself(name: str, tmp_path: Path) -> None:
    """`deepcourse run RECIPE --set ... --resume RUN` with exactly what the run was started with is the same
    recipe: the saved recipe.toml (lists) and the file with its builders' defaults (tuples such as adam's betas)
    are compared as TOML values. The run directory here is the recipe a run of it saves."""
    from deepcourse.api import shipped_recipes
    from deepcourse.training.resume import read_resume

    path = shipped_recipes()[name]
    try:
        started = load_recipe(path, ["train.epochs=1"])
    except UserError as exc:
        pytest.skip(f"needs a plugin that is not installed: {exc}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text(started.to_toml())
    (run / "checkpoints" / "step-000000001").mkdir(parents=True)  # a run that got as far as a checkpoint
    assert read_resume(run, path, ["train.epochs=1"]).recipe.to_toml() == started.to_toml()  # same TOML values
    assert read_resume(run, None, ()).recipe.to_toml() == started.to_toml()
    with pytest.raises(UserError, match=r"train.epochs: run has 1, recipe has 2"):
        read_resume(run, path, ["train.epochs=2"])


@pytest.mark.slow
def test_resume_with_the_recipe_and_an_optimizer_with_tuple_defaults(tmp_path: Path, toy_recipe: Path,
                                                                    cli_env) -> None:
    """The reported case end to end: adamw's betas default to a tuple, saved as a TOML list."""
    run = tmp_path / "run"
    sets = ["--set", "optimizer={name = 'adamw', lr = 0.01}"]
    stopped = run_cli(["run", str(toy_recipe), "--run-dir", str(run), *sets, "--set",
                       "train.callbacks=[{name = 'interrupt_at', step = 4}]"], cli_env)
    assert stopped.returncode == 130, stopped.stderr
    assert "betas = [\n    0.9,\n    0.999,\n]" in (run / "recipe.toml").read_text()
    resumed = run_cli(["run", str(toy_recipe), *sets, "--resume", str(run), "--set", "train.callbacks=[]"], cli_env)
    assert resumed.returncode == 0, resumed.stderr
