"""The analysis tools on image classifiers: `ensemble` (averaged probabilities) and `compare --paired` (McNemar).

Runs whose answers are known are planted: copies of a tiny quickstart run whose last layer is a bias alone, so one
always answers digit 0 and the other digit 1, and which test images each gets right is decided in advance.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file, save_file
from vision_fixtures import RECIPES

from deepcourse.testing import cli as main

HEAD = "classifier.3"  # quickstart's simple_cnn: the last linear layer


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    result = cli("run", RECIPES / "quickstart.toml", "--run-dir", run, "--no-report", "--set", "train.max_steps=6",
                 "--set", "train.epochs=1", "--set", "train.progress=false")
    assert result.exit_code == 0, result.output
    return run


def planted(run: Path, folder: Path, digit: int) -> Path:
    """A copy of `run` that answers `digit` for every image: the last layer's weights zero, one large bias."""
    copy = folder / f"all-{digit}"
    shutil.copytree(run, copy)
    weights = load_file(str(copy / "best" / "model.safetensors"))
    weights[f"{HEAD}.weight"] = torch.zeros_like(weights[f"{HEAD}.weight"])
    weights[f"{HEAD}.bias"] = torch.zeros_like(weights[f"{HEAD}.bias"])
    weights[f"{HEAD}.bias"][digit] = 50.0
    save_file(weights, str(copy / "best" / "model.safetensors"))
    return copy


def evaluated(run: Path, folder: Path) -> tuple[dict[str, object], list[str]]:
    written = folder / f"{run.name}.csv"
    result = cli("evaluate", run, "--split", "test", "--json", "--write-predictions", written)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), written.read_text().splitlines()


def test_an_ensemble_of_a_run_with_itself_equals_the_run(run_dir: Path, tmp_path: Path) -> None:
    result = cli("ensemble", run_dir, run_dir, "-o", tmp_path / "ens")
    assert result.exit_code == 0, result.output
    run_metrics, run_rows = evaluated(run_dir, tmp_path)
    ens_metrics, ens_rows = evaluated(tmp_path / "ens", tmp_path)
    assert [r.split(",")[:3] for r in ens_rows] == [r.split(",")[:3] for r in run_rows]  # every image's answer
    assert ens_metrics.pop("loss") == pytest.approx(run_metrics.pop("loss"), rel=1e-4)
    assert {**ens_metrics, "run_dir": ""} == {**run_metrics, "run_dir": ""}


def test_an_ensemble_averages_the_members_probabilities(run_dir: Path, tmp_path: Path) -> None:
    """Members sure of digit 0 and of digit 1: the ensemble gives each half its probability."""
    all_0, all_1 = planted(run_dir, tmp_path, 0), planted(run_dir, tmp_path, 1)
    result = cli("ensemble", all_0, all_1, all_1, "-o", tmp_path / "ens", "--json")
    assert result.exit_code == 0, result.output
    metrics, rows = evaluated(tmp_path / "ens", tmp_path)
    assert metrics["num_samples"] == len(rows) - 1
    header = rows[0].split(",")
    answers = [dict(zip(header, row.split(","))) for row in rows[1:]]
    # two of three members say 1 with certainty: the mean probability of 1 is 2/3, and every answer is 1
    assert {a["predicted"] for a in answers} == {"1"}, header
    assert all(float(a["probability"]) == pytest.approx(2 / 3, abs=1e-4) for a in answers)


def test_paired_comparison_finds_the_planted_flips(run_dir: Path, tmp_path: Path) -> None:
    all_0, all_1 = planted(run_dir, tmp_path, 0), planted(run_dir, tmp_path, 1)
    result = cli("compare", "--paired", all_0, all_1, "--split", "test", "--json", "--show", "1000")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    _, rows = evaluated(all_0, tmp_path)
    header = rows[0].split(",")
    gold = [dict(zip(header, row.split(",")))["gold"] for row in rows[1:]]
    zeros, ones = gold.count("0"), gold.count("1")
    assert found["metric"] == "accuracy" and found["items"] == len(gold)
    assert (found["only_a_right"], found["only_b_right"], found["flipped"]) == (zeros, ones, zeros + ones)
    assert [f["index"] for f in found["flips"]] == [i for i, g in enumerate(gold) if g in ("0", "1")]
    assert all(f["right"] == ("a" if f["gold"] == "0" else "b") for f in found["flips"])
    assert found["a"] == pytest.approx(zeros / len(gold)) and found["b"] == pytest.approx(ones / len(gold))
    table = cli("compare", "--paired", all_0, all_1, "--split", "test")
    assert table.exit_code == 0 and "McNemar" in table.stdout


def test_an_ensemble_of_runs_with_different_classes_exits_2(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-classes"
    shutil.copytree(run_dir, other)
    artifacts = json.loads((other / "best" / "artifacts.json").read_text())
    artifacts["class_names"] = [f"digit {c}" for c in artifacts["class_names"]]
    (other / "best" / "artifacts.json").write_text(json.dumps(artifacts))
    result = cli("ensemble", run_dir, other, "-o", tmp_path / "ens")
    assert result.exit_code == 2 and "differ" in result.stderr, result.output
    assert not (tmp_path / "ens").exists()


def test_seeds_share_a_validation_split_through_data_split_seed(run_dir: Path, tmp_path: Path) -> None:
    """Runs of other seeds carve other validation images and fit their statistics on other training images: an
    ensemble of them is refused with the way out, which data.split_seed gives (the same split for every seed)."""
    def train(name: str, *sets: str) -> Path:
        run = tmp_path / name
        options = ["train.max_steps=2", "train.epochs=1", "train.progress=false", *sets]
        result = cli("run", RECIPES / "quickstart.toml", "--run-dir", run, "--no-report",
                     *[a for s in options for a in ("--set", s)])
        assert result.exit_code == 0, result.output
        return run

    other = train("seed1", "seed=1")
    result = cli("ensemble", run_dir, other, "-o", tmp_path / "refused")
    assert result.exit_code == 2 and "train the members with the same data.split_seed" in result.output
    assert not (tmp_path / "refused").exists()
    # a task that fits nothing on train still carves each seed's own validation images: planted here by giving the
    # seed-1 run seed 0's statistics, so only the split tells them apart, and the ensemble is refused all the same
    alike = tmp_path / "seed1-alike"
    shutil.copytree(other, alike)
    shutil.copy(run_dir / "best" / "artifacts.json", alike / "best" / "artifacts.json")
    result = cli("ensemble", run_dir, alike, "-o", tmp_path / "refused")
    assert result.exit_code == 2, result.output
    assert "each trained on images the other validates on" in result.output
    assert "what it fitted" not in result.output
    assert not (tmp_path / "refused").exists()
    shared = [train(f"shared{seed}", f"seed={seed}", "data.split_seed=0") for seed in (1, 2)]
    assert (json.loads((shared[0] / "best" / "artifacts.json").read_text())
            == json.loads((run_dir / "best" / "artifacts.json").read_text()))  # seed 0's split and statistics
    result = cli("ensemble", *shared, "-o", tmp_path / "ens")
    assert result.exit_code == 0, result.output
