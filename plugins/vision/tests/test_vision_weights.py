"""model.weights = "imagenet": torchvision's weights files, read from a local folder in torchvision's format."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from vision_fixtures import make_imagefolder

from deepcourse.testing import cli as main

RECIPE = """\
name = "folder_resnet"
[task]
name = "image-classification"
[data]
name = "imagefolder"
data_dir = "{root}"
batch_size = 9
[model]
name = "resnet18"
weights = "imagenet"
[train]
epochs = 1
max_steps = 1
progress = false
freeze = ["layer1"]
"""


def run(tmp_path: Path) -> tuple[int, str]:
    recipe = tmp_path / "folder_resnet.toml"
    recipe.write_text(RECIPE.format(root=make_imagefolder(tmp_path / "chars")))
    result = CliRunner().invoke(main, ["run", str(recipe), "--runs-root", str(tmp_path / "runs")],
                                catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture()
def weights_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """An empty DEEPCOURSE_WEIGHTS folder and an empty torch hub cache; torchvision's file name for ResNet-18."""
    from torchvision.models import ResNet18_Weights

    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("DEEPCOURSE_WEIGHTS", str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("DEEPCOURSE_DOWNLOAD_WEIGHTS", raising=False)
    return folder, ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]


def test_imagenet_weights_load_from_a_folder_in_torchvision_format(tmp_path: Path, weights_folder: tuple[Path, str],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    folder, name = weights_folder
    # a tiny stand-in for torchvision's file: a few of its tensors, by its names, with its 7x7 stem and 1000 classes
    torch.save({"layer1.0.conv1.weight": torch.full((64, 64, 3, 3), 0.01), "layer1.0.bn1.weight": torch.ones(64),
                "conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, folder / name)
    with caplog.at_level(logging.INFO, logger="deepcourse"):
        code, out = run(tmp_path)
    assert code == 0, out
    assert "model.weights: loaded 2 of the model's" in caplog.text and str(folder / name) in caplog.text
    assert "conv1.weight (64x3x7x7 -> 64x3x3x3)" in caplog.text and "fc.weight (1000x512 -> 3x512)" in caplog.text
    (best,) = (tmp_path / "runs" / "folder_resnet").glob("*/best/model.safetensors")
    assert torch.equal(load_file(str(best))["layer1.0.conv1.weight"], torch.full((64, 64, 3, 3), 0.01))


def test_absent_imagenet_weights_exit_2_naming_where_it_looked(tmp_path: Path,
                                                              weights_folder: tuple[Path, str]) -> None:
    folder, name = weights_folder
    code, out = run(tmp_path)
    assert code == 2, out
    assert name in out and str(folder / name) in out and str(tmp_path / "torch-home") in out
    assert "DEEPCOURSE_DOWNLOAD_WEIGHTS=1" in out and not (tmp_path / "runs" / "folder_resnet").exists()
