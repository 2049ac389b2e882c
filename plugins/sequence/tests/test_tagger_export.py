"""The BiLSTM-CRF of a trained run exports to ONNX and TorchScript: the file gives the network's tag scores, and
decoding them on the host with the facts' CRF (NumPy Viterbi) gives the tags `predict` gives. torch.export unrolls
the LSTM over one sentence length, which is refused with the axis named."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from deepcourse.api import shipped_recipes
from deepcourse.testing import cli as main
from deepcourse.testing import decode_output


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, mini: Path) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    sets = [f"data.data_dir='{mini}'", "train.max_steps=8", "train.epochs=2", "train.progress=false"]
    result = cli("run", shipped_recipes()["conll_custom"], "--run-dir", run, "--no-report",
                 *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return run


def test_torch_export_refuses_the_lstm_naming_the_axis_it_fixes(run_dir: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(run_dir), "--format", "exported"])
    assert result.exit_code == 2, result.output
    assert "fixes the tokens axis" in result.output and "--format onnx" in result.output


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_bilstm_crf_exports_its_emissions_and_transitions(run_dir: Path, fmt: str) -> None:
    result = cli("export", run_dir, "--format", fmt)
    assert result.exit_code == 0, result.output
    assert "words (3, 12)" in result.output  # checked on other lengths than it was written with
    name = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}[fmt]
    facts = json.loads((run_dir / "export" / f"{name}.json").read_text())
    head = facts["heads"]["ner"]
    assert facts["labels"] == ["ner"] and head["decoder"] == "crf"
    assert np.asarray(head["transitions"]).shape == (len(head["tags"]), len(head["tags"]))
    assert facts["outputs"][0]["name"] == "scores_ner"


def test_host_decoding_of_the_onnx_scores_gives_predicts_tags(run_dir: Path) -> None:
    import onnxruntime
    import torch

    assert cli("export", run_dir).exit_code == 0
    facts = json.loads((run_dir / "export" / "model.onnx.json").read_text())
    from deepcourse.testing import load_trained

    trained = load_trained(run_dir)
    task = trained.task
    task.setup_data(trained.recipe.data, splits=(), seed=trained.recipe.seed, artifacts=trained.artifacts)
    sentences = [["Alice", "flew", "to", "Paris", "."], ["Bob", "Smith"]]
    batch = task.batch_of(sentences, torch.device("cpu"))
    session = onnxruntime.InferenceSession(str(run_dir / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    (scores,) = session.run(None, {k: v.numpy() for k, v in batch.items() if k in wanted})
    decoded = decode_output(scores, [len(s) for s in sentences], facts["heads"]["ner"])
    trained.model.eval()
    with torch.no_grad():
        predicted = trained.model(batch, decode=True)["pred_ner"].tolist()
    expected = [[facts["heads"]["ner"]["tags"][i] for i in row[:len(s)]] for row, s in zip(predicted, sentences)]
    assert decoded == expected
