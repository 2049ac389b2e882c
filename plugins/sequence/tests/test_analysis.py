"""The analysis tools on taggers of the toy corpus: `ensemble`, `compare --paired` and `evaluate --breakdown`.

Runs whose answers are known are planted: a trained run's copy whose output layer is set to tag every token O, or
every token S-PER (zero transitions, one large bias), so which sentences each gets right is decided in advance.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file, save_file

from deepcourse.api import shipped_recipes
from deepcourse.testing import cli as main

RECIPE = shipped_recipes()["conll_custom"]
#: the evaluated file: A (all O) gets sentence 1 right, B (all S-PER) sentences 0 and 3, neither sentence 2
PLANTED = """-DOCSTART- -X- -X- O

Alice NNP B-NP B-PER

The DT B-NP O
end NN I-NP O
. . O O

Paris NNP B-NP B-LOC
is VBZ B-VP O

Zyx NNP B-NP B-PER
"""


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, mini: Path) -> Path:
    """A short run of the toy corpus with pretrained word vectors, as the shipped NER recipes have (GloVe)."""
    folder = tmp_path_factory.mktemp("runs")
    vectors = folder / "vectors.txt"
    vectors.write_text("alice 0.1 0.2 0.3\nparis 0.3 0.2 0.1\nthe 0.0 0.1 0.0\n", encoding="utf-8")
    sets = [f"data.data_dir='{mini}'", f"data.embeddings='{vectors}'", "model.word_dim=3", "train.max_steps=4",
            "train.epochs=1", "train.progress=false"]
    run = folder / "run"
    result = cli("run", RECIPE, "--run-dir", run, "--no-report", *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return run


def planted(run: Path, folder: Path, tag: str) -> Path:
    """A copy of `run` that tags every token `tag`: the CRF's transitions zero, the projection a bias alone."""
    copy = folder / f"all-{tag}"
    shutil.copytree(run, copy)
    tags = json.loads((run / "best" / "artifacts.json").read_text())["tags"]["ner"]
    weights = load_file(str(copy / "best" / "model.safetensors"))
    for key, value in weights.items():
        if key.startswith("heads.ner."):
            weights[key] = torch.zeros_like(value)
    weights["heads.ner.proj.bias"][tags.index(tag)] = 50.0
    save_file(weights, str(copy / "best" / "model.safetensors"))
    return copy


@pytest.fixture(scope="module")
def pair(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(all O, all S-PER, a data folder holding PLANTED as the validation split)."""
    folder = tmp_path_factory.mktemp("planted")
    data = folder / "data"
    data.mkdir()
    (data / "dev.txt").write_text(PLANTED, encoding="utf-8")
    return planted(run_dir, folder, "O"), planted(run_dir, folder, "S-PER"), data


def test_an_ensemble_of_a_run_with_itself_equals_the_run(run_dir: Path, mini: Path, tmp_path: Path) -> None:
    result = cli("ensemble", run_dir, run_dir, "-o", tmp_path / "ens")
    assert result.exit_code == 0, result.output
    recipe = (tmp_path / "ens" / "recipe.toml").read_text()
    assert 'name = "ensemble"' in recipe and recipe.count('name = "bilstm_crf"') == 2
    outputs = {}
    for name, run in (("run", run_dir), ("ensemble", tmp_path / "ens")):
        written = tmp_path / f"{name}.conll"
        result = cli("evaluate", run, "--split", "test", "--json", "--write-predictions", written)
        assert result.exit_code == 0, result.output
        outputs[name] = (json.loads(result.stdout), written.read_text())
    (run_metrics, run_rows), (ens_metrics, ens_rows) = outputs["run"], outputs["ensemble"]
    assert ens_rows == run_rows  # the same tag for every token
    assert ens_metrics.pop("loss") == pytest.approx(run_metrics.pop("loss"), rel=1e-5)
    assert {**ens_metrics, "run_dir": ""} == {**run_metrics, "run_dir": ""}


def test_an_ensemble_of_two_runs_is_a_run_directory(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    all_o, all_per, data = pair
    out = tmp_path / "ens"
    result = cli("ensemble", all_o, all_per, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ensemble_of"] == [str(all_o), str(all_per)]
    result = cli("evaluate", out, "--data-dir", data, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_samples"] == 4
    result = cli("predict", out, "Alice visited Paris", "--nbest", "2", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["nbest"]["ner"]) == 2
    result = cli("report", out)
    assert result.exit_code == 0, result.output


def test_bad_ensembles_exit_2(run_dir: Path, tmp_path: Path) -> None:
    result = cli("ensemble", run_dir, "-o", tmp_path / "one")
    assert result.exit_code == 2 and "at least 2 runs" in result.stderr
    result = cli("ensemble", run_dir, tmp_path, "-o", tmp_path / "two")
    assert result.exit_code == 2 and "not a deepcourse run directory" in result.stderr
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "summary.json").unlink()
    result = cli("ensemble", run_dir, unfinished, "-o", tmp_path / "three")
    assert result.exit_code == 2 and "not a finished run" in result.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    result = cli("ensemble", run_dir, run_dir, "-o", tmp_path / "full")
    assert result.exit_code == 2 and "already exists and is not empty" in result.stderr
    other = tmp_path / "other-tags"
    shutil.copytree(run_dir, other)
    artifacts = json.loads((other / "best" / "artifacts.json").read_text())
    artifacts["tags"]["ner"] = [t.replace("PER", "PERSON") for t in artifacts["tags"]["ner"]]
    (other / "best" / "artifacts.json").write_text(json.dumps(artifacts))
    result = cli("ensemble", run_dir, other, "-o", tmp_path / "four")
    assert result.exit_code == 2 and "its labels of ner differ" in result.stderr
    assert not any((tmp_path / name).exists() for name in ("one", "two", "three", "four"))


def test_paired_comparison_finds_the_planted_flips(pair: tuple[Path, Path, Path]) -> None:
    all_o, all_per, data = pair
    result = cli("compare", "--paired", all_o, all_per, "--split", "validation", "--data-dir", data, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["metric"] == "f1" and found["items"] == 4 and found["flipped"] == 3
    assert [(f["index"], f["right"]) for f in found["flips"]] == [(0, "b"), (1, "a"), (3, "b")]
    assert found["flips"][0] == {"index": 0, "item": "Alice", "gold": "[PER Alice]", "a": "-", "b": "[PER Alice]",
                                 "right": "b"}
    # A finds no span; B finds 2 of the 3 gold spans among its 7 single-word spans: F1 = 2*2 / (7 + 3)
    assert found["a"] == 0.0 and found["b"] == pytest.approx(4 / 10)
    again = json.loads(cli("compare", "--paired", all_o, all_per, "--split", "validation", "--data-dir", data,
                           "--json").stdout)
    assert again["p_value"] == found["p_value"]  # seeded
    table = cli("compare", "--paired", all_o, all_per, "--split", "validation", "--data-dir", data)
    assert "paired bootstrap, 1000 resamples" in table.stdout and "gold: [PER Alice]" in table.stdout


def test_paired_runs_on_different_splits_or_labels_exit_2(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "on-test"
    shutil.copytree(run_dir, other)
    recipe = other / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('split = "validation"', 'split = "test"'))
    result = cli("compare", "--paired", run_dir, other)
    assert result.exit_code == 2 and "give --split to compare both on the same split" in result.stderr
    result = cli("compare", "--paired", run_dir)
    assert result.exit_code == 2 and "exactly two runs" in result.stderr


def test_breakdown_by_seen_unseen_and_out_of_vocabulary(pair: tuple[Path, Path, Path]) -> None:
    _, all_per, data = pair
    result = cli("evaluate", all_per, "--split", "validation", "--data-dir", data, "--breakdown", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    # gold: Alice (PER in the training split), Paris (LOC there), Zyx (never seen, and out of vocabulary)
    assert found["seen"]["seen in training"]["gold"] == 2 and found["seen"]["unseen in training"]["gold"] == 1
    assert found["seen"]["seen in training"]["correct"] == 1 and found["seen"]["unseen in training"]["correct"] == 1
    unseen_words = found["oov"]["all out of vocabulary"]
    assert unseen_words["gold"] == 1 and unseen_words["correct"] == 1 and unseen_words["recall"] == 1.0
    assert found["type"]["LOC"]["correct"] == 0 and found["type"]["PER"]["gold"] == 2
    table = cli("evaluate", all_per, "--split", "validation", "--data-dir", data, "--breakdown")
    assert "unseen in training" in table.stdout and "entity type" in table.stdout
