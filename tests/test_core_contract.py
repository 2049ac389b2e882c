"""What the core promises every plugin alike: split keys with one meaning, components credited to the plugin that
defines them, datasets bound to the tasks they feed, and one evaluation for `evaluate`, reports and notebooks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from core_support import make_distribution, run_cli

from deepcourse.api import ArrayDataset, DataError, evaluate_split, resolve_splits, split_indices
from deepcourse.errors import RecipeWarning


# -- data.val_split, data.train_samples, data.eval_samples --------------------------------------------------------
def blobs(n: int) -> ArrayDataset:
    return ArrayDataset(x=torch.arange(n, dtype=torch.float32)[:, None], y=torch.arange(n))


def test_val_split_carves_validation_from_train_only_when_the_dataset_has_none() -> None:
    carved = resolve_splits({"train": blobs(100)}, ("train", "validation"), dataset="d", val_split=0.2, seed=3)
    assert len(carved["train"]) == 80 and len(carved["validation"]) == 20
    assert not set(carved["train"].arrays["y"].tolist()) & set(carved["validation"].arrays["y"].tolist())
    keep, held = split_indices(100, 0.2, 3)
    assert carved["validation"].arrays["y"].tolist() == held.tolist()  # the same samples for the same seed
    again = resolve_splits({"train": blobs(100)}, ("validation",), dataset="d", val_split=0.2, seed=3)
    assert torch.equal(again["validation"].arrays["y"], carved["validation"].arrays["y"])  # evaluate sees the same


def test_a_datasets_own_validation_split_is_used_as_it_is() -> None:
    own = {"train": blobs(100), "validation": blobs(7)}
    with pytest.warns(RecipeWarning, match="data.val_split = 0.2 is not used: dataset 'd' has its own validation "
                                           "split"):
        chosen = resolve_splits(own, ("train", "validation"), dataset="d", val_split=0.2, seed=0)
    assert len(chosen["train"]) == 100 and len(chosen["validation"]) == 7


def test_a_missing_split_names_it_the_splits_there_are_and_the_key_that_helps() -> None:
    with pytest.raises(DataError) as info:
        resolve_splits({"train": blobs(10)}, ("train", "validation"), dataset="d", val_split=None, seed=0)
    assert str(info.value) == ("d has no split 'validation' here (it has: train). Set data.val_split (e.g. 0.1) to "
                               "carve a validation split from train.")
    with pytest.raises(DataError, match=r"src: d has no split 'test' here \(it has: train, validation\)\.$"):
        resolve_splits({"train": blobs(10), "validation": blobs(2)}, ("test",), dataset="d", val_split=0.5, seed=0,
                       source="src")


@pytest.mark.slow
def test_evaluate_honours_eval_samples(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "r"
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", "data.eval_samples=20", "--set",
                   "train.epochs=1", "--no-report"], cli_env)
    assert out.returncode == 0, out.stderr
    evaluated = json.loads(run_cli(["evaluate", str(run), "--json"], cli_env).stdout)
    assert evaluated["num_samples"] == 20
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert evaluated["accuracy"] == best["accuracy"]  # the same 20 samples as the training-time evaluation


# -- one evaluation -----------------------------------------------------------------------------------------------
def test_evaluate_split_is_what_evaluate_computes(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    from deepcourse.results.inference import evaluate_run, load_trained

    run = tmp_path / "r"
    assert run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--no-report", "--set",
                    "train.mixed_precision='bf16'"], cli_env).returncode == 0
    recipe, task, _, artifacts, model = load_trained(run)
    seen: list[int] = []
    result = evaluate_split(task, model, recipe, artifacts, on_batch=lambda batch, out: seen.append(len(out["preds"])))
    _, metrics = evaluate_run(run, progress=False)
    assert result.split == "validation" and len(result.data) == 51 and sum(seen) == 51
    assert {k: v for k, v in metrics.items() if k not in ("run_dir", "split")} == result.metrics
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert result.metrics["accuracy"] == best["accuracy"]  # bf16 autocast as in training: the same predictions
    with pytest.raises(DataError, match="toy_blobs has no split 'test'"):
        evaluate_split(task, model, recipe, artifacts, split="test")


# -- registry crediting and dataset/task binding -------------------------------------------------------------------
def test_a_plugin_that_imports_another_and_fails_leaves_the_other_intact(tmp_path: Path, cli_env) -> None:
    """'aaa' (loaded first: entry points load in name order) imports the 'zzz' plugin's module, then fails: zzz keeps
    its model, credited to zzz, and aaa's own model is rolled back."""
    make_distribution(tmp_path, "deepcourse-zzz", {"zzz": "zzz_plugin"}, {"zzz_plugin": """
        from deepcourse.api import MODELS

        @MODELS.register("zzz_net")
        def zzz_net(width: int = 3):
            '''the other plugin's model'''
        """})
    make_distribution(tmp_path, "deepcourse-aaa", {"aaa": "aaa_plugin"}, {"aaa_plugin": """
        import zzz_plugin  # builds on the other plugin, as a dataset plugin builds on deepcourse-vision
        from deepcourse.api import MODELS

        @MODELS.register("aaa_net")
        def aaa_net():
            '''registered, then rolled back'''

        raise RuntimeError("aaa is broken on purpose")
        """})
    env = {**cli_env, "PYTHONPATH": f"{tmp_path}:{cli_env['PYTHONPATH']}"}
    listed = run_cli(["plugins", "-v"], env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    aaa = next(line for line in lines if line.startswith("aaa "))
    zzz = lines.index(next(line for line in lines if line.startswith("zzz ")))
    assert "error" in aaa and "0 components" in aaa
    assert "ok" in lines[zzz] and "1 components" in lines[zzz] and lines[zzz + 1].strip() == "model: zzz_net"
    models = run_cli(["list", "models", "*_net"], env).stdout
    assert "zzz_net  [zzz]" in models and "aaa_net" not in models


def test_a_dataset_bound_to_a_task_it_does_not_feed_fails_at_check(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    out = run_cli(["check", str(toy_recipe), "--set", "task.name=toy-regression"], cli_env)
    assert out.returncode == 2  # an unknown task: nothing more to say about the dataset
    pytest.importorskip("deepcourse_sequence")
    recipe = tmp_path / "bad.toml"
    recipe.write_text(toy_recipe.read_text().replace('name = "toy-classification"', 'name = "sequence-tagging"'))
    out = run_cli(["check", str(recipe)], cli_env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert ("data.name: dataset 'toy_blobs' is for task 'toy-classification', but task.name is 'sequence-tagging'. "
            "Datasets for 'sequence-tagging': conll, conll2003; or change task.name") in out.stderr


def test_registry_lookups_never_discover_plugins() -> None:
    """A fresh process: the registry is empty until discovery runs, and discovery is the explicit step."""
    code = ("from deepcourse.registry import MODELS, OPTIMIZERS\n"
            "assert 'sgd' not in OPTIMIZERS and len(MODELS) == 0\n"
            "from deepcourse.api import load_plugins\n"
            "load_plugins()\n"
            "assert 'sgd' in OPTIMIZERS\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# -- shipped recipes --------------------------------------------------------------------------------------------
def test_shipped_recipes_are_listed_and_found_by_name(tmp_path: Path, cli_env, monkeypatch) -> None:
    from deepcourse.api import shipped_recipes
    from deepcourse.recipe.shipped import resolve

    monkeypatch.chdir(tmp_path)  # not the checkout: a name, or recipes/NAME.toml, finds the shipped file

    shipped = shipped_recipes()
    assert {"quickstart", "cifar_resnet", "ner_bilstm_crf", "ablations/lenet_dropout"} <= set(shipped)
    assert resolve("quickstart") == shipped["quickstart"] == resolve("recipes/quickstart.toml")
    mine = tmp_path / "quickstart"
    mine.write_text("")
    assert resolve(mine) == mine  # a file of your own always wins over a shipped name
    listed = run_cli(["recipes"], cli_env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.split()[:1] == ["quickstart"])
    assert "[vision]" in line and "digits" in line
    assert f"{len(shipped)} recipe(s)" in listed.stdout
    wrong = run_cli(["check", "quikstart"], cli_env, cwd=tmp_path)
    assert wrong.returncode == 2 and "quikstart: recipe file not found. Did you mean 'quickstart'?" in wrong.stderr


def test_a_local_file_that_shadows_a_shipped_recipe_is_named_with_both_paths(tmp_path: Path, monkeypatch) -> None:
    import warnings

    from deepcourse.api import shipped_recipes
    from deepcourse.recipe import shipped

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shipped, "_WARNED", set())
    original = shipped_recipes()["quickstart"]
    Path("quickstart.toml").write_text(original.read_text().replace("epochs = ", "epochs = 1 + "))
    with pytest.warns(RecipeWarning, match=rf"quickstart.toml: a local file with the name of the shipped recipe "
                                           rf"'quickstart' \({original}\), and different from it; using the local "
                                           rf"file {tmp_path / 'quickstart.toml'}"):
        assert shipped.resolve("quickstart.toml") == Path("quickstart.toml")  # your own file wins, said once
    Path("recipes").mkdir()
    Path("recipes/quickstart.toml").write_bytes(original.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)
        assert shipped.resolve("quickstart.toml") == Path("quickstart.toml")  # already said in this process
        assert shipped.resolve("recipes/quickstart.toml") == Path("recipes/quickstart.toml")  # the same text
        assert shipped.resolve("quickstart") == original  # the name alone is the shipped one
