"""`deepcourse export` in the core: the written file is checked against the model (a mismatch exits 1), bad inputs
exit 2 naming what is wrong (not a run, an unknown format, an operator ONNX cannot express), and the NumPy Viterbi
that users of an exported tagger decode with finds the best path. The zoo round-trips are in the plugins' tests."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from deepcourse.api import ExportGraph
from deepcourse.results import export as export_module
from deepcourse.results.viterbi import decode_output, viterbi
from deepcourse.testing import cli as main


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory, plugin_site: Path) -> Path:
    from core_support import TOY_RECIPE

    folder = tmp_path_factory.mktemp("export")
    (folder / "toy.toml").write_text(TOY_RECIPE.replace("epochs = 3", "epochs = 1"))
    result = cli("run", folder / "toy.toml", "--run-dir", folder / "run", "--no-report")
    assert result.exit_code == 0, result.output
    return folder / "run"


class Cumulative(nn.Module):
    """A network with an operator ONNX has no translation for (aten::cummax)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(self.model(x), dim=1)[0]


def toy_graph(wrap: type[nn.Module] | None = None):
    def export_graph(self, model: nn.Module, facts, artifacts) -> ExportGraph:
        module = wrap(model) if wrap else model
        generator = torch.Generator().manual_seed(0)
        x, check = (torch.randn(n, facts["in_features"], generator=generator) for n in (2, 5))
        return ExportGraph(module, {"x": x}, ["logits"], dynamic={"x": {0: "batch"}}, check={"x": check},
                           facts={"classes": facts["num_classes"]})
    return export_graph


@pytest.fixture()
def exportable(monkeypatch: pytest.MonkeyPatch, plugin_site: Path) -> None:
    import toy_plugin

    monkeypatch.setattr(toy_plugin.ToyClassification, "export_graph", toy_graph(), raising=False)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported"])
def test_export_writes_the_file_and_its_facts_and_checks_them(toy_run: Path, exportable: None, tmp_path: Path,
                                                               fmt: str) -> None:
    out = tmp_path / ("toy.pt2" if fmt == "exported" else f"toy.{fmt}")
    result = cli("export", toy_run, "--format", fmt, "-o", out)
    assert result.exit_code == 0, result.output
    assert "checked on x (5, 8)" in result.output
    facts = json.loads(out.with_name(out.name + ".json").read_text())
    assert facts["inputs"] == [{"name": "x", "shape": ["batch", 8], "dtype": "float32"}]
    assert facts["outputs"][0]["name"] == "logits" and facts["classes"] == 3 and facts["model"] == "toy_mlp"
    if fmt == "onnx":
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(meta["deepcourse"]) == facts
        assert export_module.read_facts(out) == facts


def test_default_output_is_inside_the_run_and_is_replaced_on_export_again(toy_run: Path, exportable: None) -> None:
    for _ in range(2):
        result = cli("export", toy_run)
        assert result.exit_code == 0, result.output
    assert (toy_run / "export" / "model.onnx").is_file() and (toy_run / "export" / "model.onnx.json").is_file()


def test_a_file_that_differs_from_the_model_exits_1_with_the_largest_error(
        toy_run: Path, exportable: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = export_module.RUNNERS["torchscript"]
    monkeypatch.setitem(export_module.RUNNERS, "torchscript",
                        lambda path, inputs: tuple(t + 0.5 for t in original(path, inputs)))
    out = tmp_path / "toy.pt"
    result = cli("export", toy_run, "--format", "torchscript", "-o", out)
    assert result.exit_code == 1, result.output
    assert "differ from the model's by up to 0.5" in result.output
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing left behind


def test_an_operator_onnx_cannot_express_is_named(toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  plugin_site: Path) -> None:
    import toy_plugin

    monkeypatch.setattr(toy_plugin.ToyClassification, "export_graph", toy_graph(Cumulative), raising=False)
    result = cli("export", toy_run, "-o", tmp_path / "toy.onnx")
    assert result.exit_code == 2, result.output
    assert "aten::cummax" in result.output and "--format exported" in result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--format", "tflite"], "Invalid value for '--format'"),
    (["--format", "exported", "-o", "model.onnx"], "ends in .pt2"),
])
def test_bad_options_exit_2(toy_run: Path, exportable: None, args: list[str], message: str) -> None:
    result = cli("export", toy_run, *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_not_a_run_exits_2(tmp_path: Path) -> None:
    result = cli("export", tmp_path)
    assert result.exit_code == 2 and "not a deepcourse run directory" in result.output, result.output


def test_a_task_without_an_export_graph_exits_2(toy_run: Path, tmp_path: Path) -> None:
    result = cli("export", toy_run, "-o", tmp_path / "toy.onnx")
    assert result.exit_code == 2 and "Task.export_graph" in result.output, result.output


def brute_force(emissions: np.ndarray, start: np.ndarray, end: np.ndarray, transitions: np.ndarray) -> list[int]:
    length, tags = emissions.shape

    def score(path: tuple[int, ...]) -> float:
        return start[path[0]] + end[path[-1]] + sum(emissions[t, k] for t, k in enumerate(path)) + \
            sum(transitions[a, b] for a, b in zip(path, path[1:]))

    return list(max(itertools.product(range(tags), repeat=length), key=score))


@pytest.mark.parametrize("length", [1, 2, 5])
def test_numpy_viterbi_finds_the_best_path(length: int) -> None:
    rng = np.random.default_rng(length)
    emissions, start, end, transitions = (rng.normal(size=s) for s in ((length, 4), 4, 4, (4, 4)))
    assert viterbi(emissions, start, end, transitions) == brute_force(emissions, start, end, transitions)


def test_decode_output_cuts_each_sentence_to_its_length() -> None:
    scores = np.zeros((2, 3, 2))
    scores[:, :, 1] = 1.0
    crf = {"tags": ["O", "B-X"], "decoder": "crf", "start": [0, 0], "end": [0, 0], "transitions": [[0, 0], [0, -5]]}
    assert decode_output(scores, [3, 1], {"tags": ["O", "B-X"], "decoder": "argmax"}) == [["B-X"] * 3, ["B-X"]]
    assert decode_output(scores, [2, 1], crf) == [["B-X", "O"], ["B-X"]]  # the transition B-X -> B-X costs 5
