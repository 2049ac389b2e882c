"""End to end through the `deepcourse` command: train, evaluate, predict; recipes; user errors exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from vision_fixtures import RECIPES, class_image, make_imagefolder, png_bytes

from deepcourse.testing import cli as main

VISION_RECIPES = sorted(p.name for pattern in ("quickstart.toml", "cifar_*.toml", "mnist_*.toml",
                                               "imagefolder_*.toml") for p in RECIPES.glob(pattern))


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def only_run(runs: Path) -> Path:
    found = [p for p in runs.glob("*/*") if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def test_vision_recipes_check() -> None:
    assert {"quickstart.toml", "mnist_lenet.toml", "mnist_resnet.toml", "cifar_lenet.toml", "cifar_resnet.toml",
            "cifar_simple_cnn.toml", "imagefolder_alexnet.toml"} <= set(VISION_RECIPES)
    for name in VISION_RECIPES:
        code, out = cli("check", str(RECIPES / name))
        assert code == 0, f"{name}: {out}"


def test_list_shows_the_plugin() -> None:
    code, out = cli("list", "models")
    assert code == 0
    for name in ("lenet5", "resnet18", "alexnet", "googlenet", "densenet121", "vgg16", "mlp", "simple_cnn"):
        assert any(line.split()[:2] == [name, "[vision]"] for line in out.splitlines()), name


def test_quickstart_train_evaluate_predict(tmp_path: Path) -> None:
    code, out = cli("run", str(RECIPES / "quickstart.toml"), "--runs-root", str(tmp_path / "runs"),
                    "--set", "train.max_steps=12", "--set", "train.progress=false")
    assert code == 0, out
    run = only_run(tmp_path / "runs")
    assert (run / "best" / "model.safetensors").exists()
    report = (run / "report" / "report.md").read_text()  # `run` writes a report, with the task's figures
    assert "confusion_matrix.png" in report and "## Per-class precision, recall and F1" in report
    assert (run / "report" / "confusion_matrix.png").stat().st_size > 0
    artifacts = json.loads((run / "best" / "artifacts.json").read_text())
    assert artifacts["class_names"] == [str(i) for i in range(10)] and artifacts["source_size"] == 8

    code, out = cli("evaluate", str(run), "--split", "test")
    assert code == 0, out
    assert "num_samples          360" in out and "per-class accuracy:" in out and "confusion matrix" in out
    code, out = cli("evaluate", str(run), "--split", "test", "--json")
    metrics = json.loads(out)
    assert 0 <= metrics["accuracy"] <= 1 and sum(map(sum, metrics["confusion_matrix"])) == 360

    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(class_image(3, 20, 3, __import__("numpy").random.default_rng(0))))  # any size/mode
    code, out = cli("predict", str(run), str(image), "--json")
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["input"] == str(image) and result["class"] in artifacts["class_names"]
    assert 0 < result["probability"] <= 1 and len(result["top"]) == 3
    code, out = cli("predict", str(run), str(image))
    assert code == 0 and out.startswith(f"{image}: ")
    code, out = cli("predict", str(run), str(tmp_path / "missing.png"), "-o", str(tmp_path / "out.txt"))
    assert code == 2 and "missing.png: image file not found" in out
    assert not (tmp_path / "out.txt").exists() and not list(tmp_path.glob(".out.txt*"))  # no half-written -o

    code, out = cli("evaluate", str(run), "--split", "tset")  # the split named, with the ones there are
    assert code == 2 and "--split tset: digits has no split 'tset' (it has: train, test). Did you mean 'test'?" in out
    code, out = cli("evaluate", str(run), "--split", "validation", "--data-dir", str(tmp_path))
    assert code == 2 and f"--data-dir: folder '{tmp_path}' holds no files of dataset 'digits'" in out  # said so,
    assert "leave --data-dir out" in out  # never a fall-back to another copy


@pytest.mark.slow
def test_imagefolder_alexnet_recipe_with_ten_crop_tta(tmp_path: Path) -> None:
    classes = [f"c{i}" for i in range(12)]  # like the course's 12-class 28x28 grayscale character set
    root = make_imagefolder(tmp_path / "chars", classes, per_class=3, size=28, channels=1, splits=("train",))
    make_imagefolder(root, classes, per_class=1, size=28, channels=1, splits=("develop", "test"), seed=1)
    code, out = cli("run", str(RECIPES / "imagefolder_alexnet.toml"), "--runs-root", str(tmp_path / "runs"),
                    "--set", f'data.data_dir="{root}"', "--set", "train.max_steps=2", "--set", "eval.tta=ten_crop",
                    "--set", "model.hidden=64", "--set", "train.progress=false")
    assert code == 0, out
    run = only_run(tmp_path / "runs")
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert "top5_accuracy" in metrics and 0 <= metrics["accuracy"] <= 1
    code, out = cli("evaluate", str(run), "--split", "test", "--json")
    assert code == 0 and len(json.loads(out)["per_class_accuracy"]) == 12
    elsewhere = make_imagefolder(tmp_path / "new_test", classes[:5], per_class=2, size=28, channels=1,
                                 splits=("test",), seed=2)  # only test/, only some classes: no training data
    code, out = cli("evaluate", str(run), "--split", "test", "--data-dir", str(elsewhere), "--json")
    assert code == 0, out
    assert json.loads(out)["num_samples"] == 10


def test_corrupt_image_exits_2_naming_the_file(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "chars", per_class=2, size=28, channels=1)
    bad = root / "train" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code, out = cli("run", str(RECIPES / "imagefolder_alexnet.toml"), "--runs-root", str(tmp_path / "runs"),
                    "--set", f'data.data_dir="{root}"', "--set", "train.max_steps=1")
    assert code == 2, out
    assert str(bad) in out and "cannot decode image" in out and "Traceback" not in out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("best"))


def test_bad_transform_and_tta_exit_2(tmp_path: Path) -> None:
    code, out = cli("run", str(RECIPES / "quickstart.toml"), "--runs-root", str(tmp_path / "runs"),
                    "--set", 'task.transforms=[{name = "random_crop", padding = "4"}]')
    assert code == 2 and "task.transforms[0]: random_crop: padding" in out
    code, out = cli("run", str(RECIPES / "quickstart.toml"), "--runs-root", str(tmp_path / "runs"),
                    "--set", "eval.tta=ten_crop")
    assert code == 2 and "eval.tta" in out and "random_crop" in out
    code, out = cli("check", str(RECIPES / "quickstart.toml"), "--set", "eval.tta=five_crop")
    assert code == 2 and "eval.tta" in out


def test_label_smoothing_and_augmentation_reach_the_training_step() -> None:
    from deepcourse.api import build_task, load_recipe

    def loss(*overrides: str) -> float:
        recipe = load_recipe(RECIPES / "quickstart.toml", overrides)
        task = build_task(recipe)
        bundle = task.setup_data(recipe.data, splits=("train",), seed=0)
        torch.manual_seed(0)
        model = task.build_model(recipe.model, bundle.facts)
        batch = bundle.splits["train"].__getitems__(list(range(32)))
        torch.manual_seed(1)
        return float(task.training_step(model, batch)[0].detach())  # (loss, outputs for the training accuracy)

    plain = loss("task.label_smoothing=0.0")
    assert loss("task.label_smoothing=0.0") == plain  # deterministic under the seed
    assert loss("task.label_smoothing=0.3") != plain
    assert loss("task.label_smoothing=0.0", 'task.transforms=[{name = "hflip", p = 1.0}]') != plain
