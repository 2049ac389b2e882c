"""Looking inside CNNs: the stage rule and Grad-CAM on every model of the zoo, `deepcourse explain` on a tiny trained
run (figures written and readable, the numbers consistent with `predict`), `evaluate --write-predictions`, and the
report's confusion matrix and per-class scores."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from test_vision_models import CASES, build
from vision_fixtures import RECIPES, bomb_png, class_image, png_bytes

from deepcourse.api import UserError, grad_cam, module_outputs
from deepcourse.testing import cli as main
from deepcourse_vision.explain import cam_layer, find_stages
from deepcourse_vision.report import class_scores

#: the largest nets: seconds each on a CPU, so with the slow tests
BIG = {"resnet101", "resnet152", "vgg16", "vgg19", "densenet121"}


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def png_size(path: Path) -> tuple[int, int]:
    import matplotlib.image as mpimg

    height, width = mpimg.imread(path).shape[:2]
    return width, height


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in sorted(CASES)])
def test_every_zoo_model_has_stages_and_a_grad_cam_of_the_input_size(name: str) -> None:
    options, channels, size = CASES[name]
    torch.manual_seed(0)
    model = build(name, options, in_channels=channels, image_size=size).eval()
    x = torch.randn(1, channels, size, size)
    stages = find_stages(module_outputs(model, lambda: model(x)))
    if name == "mlp":
        assert stages == [] and cam_layer(model, stages, None) is None  # no convolution: no maps to weigh
        return
    assert stages, name
    sizes = [s.maps.shape[-1] for s in stages]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)  # one stage per resolution
    assert all(s.maps.shape[-1] * s.maps.shape[-2] > 1 for s in stages)
    layer_name, layer = cam_layer(model, stages, None)
    assert layer_name == stages[-1].name
    for target in (0, 3):
        cam = grad_cam(lambda v: model(v), layer, x, target)
        assert cam.shape == (1, size, size), name  # upsampled to the input's height and width
        assert torch.isfinite(cam).all() and (cam >= 0).all()


def test_stage_names_follow_the_architecture() -> None:
    """The rule finds what a student would call the stages: LeNet's two activations (not the pools after them), a
    ResNet's four layers."""
    lenet = build("lenet5", in_channels=1, image_size=28).eval()
    stages = find_stages(module_outputs(lenet, lambda: lenet(torch.randn(1, 1, 28, 28))))
    assert [(s.name, s.shape) for s in stages] == [("features.2", "6x28x28"), ("features.6", "16x10x10")]
    resnet = build("resnet18", {"stem": "cifar"}).eval()
    stages = find_stages(module_outputs(resnet, lambda: resnet(torch.randn(1, 3, 32, 32))))
    assert [s.name for s in stages] == ["layer1", "layer2", "layer3", "layer4"]


def test_a_model_and_the_layer_option_choose_the_grad_cam_layer() -> None:
    model = build("resnet18", {"stem": "cifar"}).eval()
    stages = find_stages(module_outputs(model, lambda: model(torch.randn(1, 3, 32, 32))))
    assert cam_layer(model, stages, "layer3")[0] == "layer3"
    model.explain_layer = "layer2"  # the model's own choice, which --layer still overrides
    assert cam_layer(model, stages, None)[0] == "layer2" and cam_layer(model, stages, "layer1")[0] == "layer1"
    with pytest.raises(UserError, match=r"--layer layr4: the model has no module of that name. Did you mean "
                                        r"'layer4'\?"):
        cam_layer(model, stages, "layr4")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart CNN (8x8 digits), 30 steps: right on most images, so a mistake and the figures mean something."""
    root = tmp_path_factory.mktemp("runs")
    out = cli("run", RECIPES / "quickstart.toml", "--runs-root", root, "--set", "train.max_steps=30",
              "--set", "train.progress=false", "--set", "train.epochs=2", "--no-report")
    assert out.exit_code == 0, out.output
    return next(p for p in root.glob("*/*") if p.is_dir())


@pytest.fixture()
def digits(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for label in (3, 7):
        path = tmp_path / f"digit{label}.png"
        path.write_bytes(png_bytes(class_image(label, 8, 1, rng)))
        paths.append(path)
    return paths


def test_explain_writes_every_figure_and_agrees_with_predict(quick_run: Path, digits: list[Path],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "explained"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # other files in the folder are left alone
    result = cli("explain", quick_run, *digits, "-o", out, "--target", "5", "--topk", "3", "--json")
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    model, *images = numbers["explanations"]
    # simple_cnn is conv -> norm -> pool -> ReLU: its stages end at the norm (8 px), the next norm (4 px) and the
    # last ReLU on the pooled maps, which the features Sequential returns (2 px)
    assert [s["name"] for s in model["stages"]] == ["features.1", "features.5", "features"]
    assert model["cam_layer"] == "features"
    expected = {"filters.png", "explain.md", "notes.txt"}
    for i, (path, image) in enumerate(zip(digits, images), 1):
        assert image["input"] == str(path)
        probs = [t["probability"] for t in image["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert image["predicted"] == image["top"][0]["class"] and set(image["classes"]) >= {image["predicted"], "5"}
        assert all(c["ig_convergence_delta"] < 0.05 for c in image["classes"].values())
        predicted = json.loads(cli("predict", quick_run, path, "--json").stdout)
        assert predicted["class"] == image["predicted"]
        assert predicted["probability"] == pytest.approx(image["probability"], abs=1e-5)
        expected |= {f"{i:02d}_{path.stem}_attribution.png", f"{i:02d}_{path.stem}_feature_maps.png"}
    assert {p.name for p in out.iterdir()} == expected
    assert (out / "notes.txt").read_text() == "mine"
    width, height = png_size(out / "01_digit3_attribution.png")
    assert 900 <= width <= 2000 and 200 <= height <= 500, (width, height)  # input, 2 classes x 2 maps, the bars
    width, height = png_size(out / "01_digit3_feature_maps.png")
    assert 700 <= width <= 1400 and 300 <= height <= 700, (width, height)  # 3 stages x (input + 8 channels)
    md = (out / "explain.md").read_text()
    assert md.count("![Where the network looked]") == 2 and "Grad-CAM on `features`" in md
    assert "| class | probability |" in md and "for --target 5" in md


def test_explain_defaults_to_a_folder_in_the_run_and_refuses_what_does_not_apply(quick_run: Path,
                                                                                  digits: list[Path]) -> None:
    result = cli("explain", quick_run, digits[0])
    assert result.exit_code == 0, result.output
    assert "written: " in result.stdout and (quick_run / "explain" / "explain.md").exists()
    for args, message in ((["--target", "seven"], "--target seven: not a class of this run. Its classes: 0, 1, 2"),
                          (["--nbest", "2"], "--nbest: does not apply to an image classifier"),
                          (["--layer", "features.77"], "--layer features.77: the model has no module of that "
                                                        "name. Did you mean 'features.7'?")):
        result = cli("explain", quick_run, digits[0], "-o", quick_run / "other", *args)
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert not (quick_run / "other").exists()


@pytest.mark.parametrize(("width", "pixels"), [(30_000, "900,000,000"), (10_000, "100,000,000")])
def test_a_decompression_bomb_is_refused_by_explain_and_predict(quick_run: Path, digits: list[Path], tmp_path: Path,
                                                                width: int, pixels: str) -> None:
    """Above twice PIL's pixel limit PIL raises an exception of its own (a traceback, exit 1); between the limit and
    twice it, a warning, then gigabytes decoded. Both are refused from the header, naming the file and the limit."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(width, width))
    message = f"{bomb}: image of {pixels} pixels, above the limit of 89,478,485 (PIL's Image.MAX_IMAGE_PIXELS"
    for args in (["explain", quick_run, digits[0], bomb, "-o", tmp_path / "explained"],
                 ["predict", quick_run, digits[0], bomb, "-o", tmp_path / "predicted.txt"]):
        result = cli(*args)
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert "Traceback" not in result.output and "DecompressionBombWarning" not in result.output
    assert {p.name for p in tmp_path.iterdir()} == {"bomb.png", "digit3.png", "digit7.png"}  # nothing half written


def test_evaluate_writes_one_csv_row_per_image(quick_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    result = cli("evaluate", quick_run, "--split", "test", "--json", "--write-predictions", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == metrics["num_samples"] == 360 and list(rows[0]) == ["id", "gold", "predicted", "probability"]
    assert [int(r["id"]) for r in rows] == list(range(360))
    right = sum(r["gold"] == r["predicted"] for r in rows)
    assert right / len(rows) == pytest.approx(metrics["accuracy"])
    matrix = metrics["confusion_matrix"]
    assert all(sum(r["gold"] == str(g) and r["predicted"] == str(p) for r in rows) == matrix[g][p]
               for g in range(10) for p in (0, 5))
    assert all(0 < float(r["probability"]) <= 1 for r in rows)
    assert not list(tmp_path.glob(".predictions*"))  # written through a temporary name, which is gone


def test_report_has_a_titled_confusion_matrix_and_per_class_scores(quick_run: Path) -> None:
    result = cli("report", quick_run)
    assert result.exit_code == 0, result.output
    md = (quick_run / "report" / "report.md").read_text()
    metrics = json.loads(cli("evaluate", quick_run, "--json").stdout)  # the report's split: validation
    scores = class_scores(torch.tensor(metrics["confusion_matrix"]))
    section = md.split("## Per-class precision, recall and F1\n", 1)[1].lstrip("\n")
    table = section.split("\n\n", 1)[0].splitlines()
    assert table[0] == "| class | precision | recall (accuracy) | F1 | images |"
    for c, row in enumerate(table[2:12]):
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert cells[1:4] == [f"{float(scores[k][c]):.4f}" for k in ("precision", "recall", "f1")]
        assert float(cells[2]) == pytest.approx(metrics["per_class_accuracy"][str(c)], abs=1e-4)
    for name in ("confusion_matrix.png", "per_class.png", "lr.png", "grad_norm.png"):
        assert f"]({name})" in md
        width, height = png_size(quick_run / "report" / name)
        assert 500 <= width <= 2000 and 350 <= height <= 1200, (name, width, height)


def test_class_scores_match_their_definitions() -> None:
    matrix = torch.tensor([[5, 1, 0], [2, 2, 0], [0, 0, 0]])  # class 2: no images and never predicted
    scores = class_scores(matrix)
    assert scores["precision"].tolist() == pytest.approx([5 / 7, 2 / 3, 0.0])
    assert scores["recall"].tolist() == pytest.approx([5 / 6, 0.5, 0.0])
    assert scores["f1"].tolist() == pytest.approx([2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), 2 * (2 / 3) * 0.5 /
                                                   (2 / 3 + 0.5), 0.0])
