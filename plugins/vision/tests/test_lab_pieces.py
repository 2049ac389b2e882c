"""Students' lab pieces where the built-in ones go: `model.norm`, `model.activation`, the MLP's `linear` and
`dropout_layer`, `task.loss`, and `optimizer.name = "lab:..."`.

The pieces are the reference solutions of the core's tests (tests/lab_solutions.py), registered by a student's lab
plugin written for the test into a folder of its own: a lab plugin registers with `deepcourse.lab`, which this plugin
never imports (it reaches the pieces through `deepcourse.api`, as any other plugin would). Models run in float64, so a
hand-written numpy piece and torch's own layer agree to rounding, and a few training steps through the engine must
log the same losses.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from vision_fixtures import RECIPES

import deepcourse
from deepcourse.api import CALLBACKS, MODELS, OPTIMIZERS, PIECES, Callback, LabLayer, call_builder
from deepcourse.testing import cli as main

REPO = Path(__file__).resolve().parents[3]
#: the student's lab plugin: the core tests' reference solutions, plus a planted bug and a broken piece
STUDENT_LAB = '''
"""A lab plugin, as `deepcourse new-plugin --kind lab` starts one, with its stubs filled in."""
import numpy as np

from deepcourse import lab
import vision_lab_solutions as solutions

LAYERS = solutions.SOLUTIONS["layer"]
for reference in ("affine", "relu", "batchnorm", "groupnorm", "dropout"):
    lab.layer(f"vt_{reference}", *LAYERS[reference], reference=reference)
lab.layer("vt_bn_no_mean_term", solutions.batchnorm_forward, solutions.batchnorm_backward_without_mean_term,
          reference="batchnorm")
lab.loss("vt_softmax", solutions.softmax_loss, reference="softmax")
lab.loss("vt_svm", solutions.svm_loss, reference="svm")
lab.update_rule("vt_adam", solutions.adam, reference="adam")


def affine_backward_transposed_dx(dout, cache):
    dx, grads = solutions.affine_backward(dout, cache)
    return dx.T, grads  # N x D read as D x N: the wrong shape


lab.layer("vt_affine_bad_dx", solutions.affine_forward, affine_backward_transposed_dx, reference="affine")
NAMES = ["vt_affine", "vt_relu", "vt_batchnorm", "vt_groupnorm", "vt_dropout", "vt_bn_no_mean_term", "vt_softmax",
         "vt_svm", "vt_adam", "vt_affine_bad_dx"]
'''


class Float64(nn.Module):
    """The vision MLP in float64: the engine trains it unchanged (its input is cast here)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.double())  # type: ignore[no-any-return]


def mlp64(num_classes: int, in_channels: int, image_size: int, norm: str = "none", activation: str = "relu",
          linear: str = "torch", dropout: float = 0.0, dropout_layer: str = "torch") -> nn.Module:
    """The vision `mlp` (hidden 16, 16) in float64, its options validated as the `mlp` model's are."""
    options = {"hidden": [16, 16], "norm": norm, "activation": activation, "linear": linear, "dropout": dropout,
               "dropout_layer": dropout_layer}
    return Float64(call_builder(MODELS.get("mlp"), options, loc="model", provided={
        "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}))


class InterruptAt(Callback):
    """Ctrl-C (a real SIGINT to this process) after optimizer step `step`: the loop saves a checkpoint and stops."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, ctx: Any, loss: Any) -> None:
        if ctx.state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def pieces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    folder = tmp_path_factory.mktemp("student_lab")
    shutil.copy(REPO / "tests" / "lab_solutions.py", folder / "vision_lab_solutions.py")
    (folder / "vision_test_lab.py").write_text(STUDENT_LAB, encoding="utf-8")
    sys.path.insert(0, str(folder))
    names: list[str] = []
    try:
        names = importlib.import_module("vision_test_lab").NAMES
        MODELS.register("vt_mlp64", mlp64)
        CALLBACKS.register("vt_interrupt_at", InterruptAt)
        yield names
    finally:
        for name in names:
            PIECES.unregister(name)
            OPTIMIZERS.unregister(f"lab:{name}")
        MODELS.unregister("vt_mlp64")
        CALLBACKS.unregister("vt_interrupt_at")
        sys.path.remove(str(folder))
        for module in ("vision_test_lab", "vision_lab_solutions"):
            sys.modules.pop(module, None)


def recipe(model: dict[str, Any], *, optimizer: dict[str, Any] | None = None, task: dict[str, Any] | None = None,
           epochs: int = 1, **train: Any) -> dict[str, Any]:
    """Four steps of 16 bundled 8x8 digits per epoch, the loss logged at every step."""
    return {"name": "lab-pieces", "seed": 0, "task": {"name": "image-classification", **(task or {})},
            "data": {"name": "digits", "batch_size": 16, "train_samples": 64, "val_split": 0.15, "eval_samples": 32},
            "model": {"name": "vt_mlp64", **model}, "optimizer": optimizer or {"name": "sgd", "lr": 0.1},
            "train": {"epochs": epochs, "log_every": 1, "progress": False, "threads": 1, **train}}


def logged(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "seconds")} for r in rows]


def assert_same_curve(a: Path, b: Path, *, rel: float = 1e-6) -> None:
    """Every logged number of two runs agrees to `rel` (the loss is logged through a float32 meter)."""
    rows_a, rows_b = logged(a), logged(b)
    assert [(r["step"], r["split"], r["scope"]) for r in rows_a] == [(r["step"], r["split"], r["scope"])
                                                                     for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("loss", "grad_norm", "accuracy"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=rel, abs=1e-12), (key, ra, rb)


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "best" / "model.safetensors"))


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_an_mlp_of_lab_pieces_trains_to_the_builtin_loss_curve(pieces: list[str], tmp_path: Path) -> None:
    """Affine, ReLU and batch norm written by hand, and the softmax loss, against nn.Linear, nn.ReLU,
    nn.BatchNorm1d and cross-entropy: the same seed gives the same start, and four SGD steps the same losses,
    gradient norms and validation loss; a batch norm whose backward forgets the mean term does not."""
    def run(name: str, model: dict[str, Any], task: dict[str, Any] | None = None) -> Path:
        return deepcourse.run(recipe(model, task=task), run_dir=tmp_path / name, report=False).run_dir

    builtin = run("builtin", {"norm": "batch"})
    lab = run("lab", {"norm": "lab:vt_batchnorm", "linear": "lab:vt_affine", "activation": "lab:vt_relu"},
              {"loss": "lab:vt_softmax"})
    assert_same_curve(builtin, lab)
    assert {"net.1.w", "net.2.running_var", "net.2.gamma"} <= set(weights(lab))  # the lab's modules were trained
    assert torch.allclose(weights(lab)["net.2.running_var"], weights(builtin)["net.2.running_var"], rtol=1e-9)

    buggy = run("buggy", {"norm": "lab:vt_bn_no_mean_term", "linear": "lab:vt_affine", "activation": "lab:vt_relu"})
    steps = [r["loss"] for r in logged(buggy) if r["scope"] == "step"]
    expected = [r["loss"] for r in logged(builtin) if r["scope"] == "step"]
    assert steps[0] == pytest.approx(expected[0], rel=1e-6)  # the same forward pass ...
    assert abs(steps[-1] - expected[-1]) > 1e-4  # ... and other steps: the comparison sees a wrong backward


@pytest.mark.usefixtures("pieces")
def test_a_lab_dropout_piece_completes_a_five_layer_mlp_of_lab_pieces() -> None:
    """affine -> batchnorm -> relu -> dropout, four times, then affine: every layer a student's."""
    net = call_builder(MODELS.get("mlp"), {"hidden": [32, 32, 32, 32], "norm": "lab:vt_batchnorm",
                                           "linear": "lab:vt_affine", "activation": "lab:vt_relu", "dropout": 0.5,
                                           "dropout_layer": "lab:vt_dropout"},
                       loc="model", provided={"num_classes": 10, "in_channels": 3, "image_size": 8})
    lab = [m for m in net if isinstance(m, LabLayer)]
    assert [m.reference.name for m in lab] == ["affine", "batchnorm", "relu", "dropout"] * 4 + ["affine"]
    assert len(lab) == len(net) - 1  # all but the flatten
    x = torch.randn(64, 3, 8, 8)
    net.train()
    out = net(x)
    out.sum().backward()
    dropped = net[4](torch.ones(1000, 32))
    assert 0.4 < float((dropped == 0).float().mean()) < 0.6 and float(dropped.max()) == 2.0  # p = 0.5, inverted
    net.eval()
    assert torch.equal(net(x), net(x))  # test mode: no dropout


@pytest.mark.usefixtures("pieces")
@pytest.mark.parametrize(("builtin", "piece", "options"), [("batch", "lab:vt_batchnorm", {}),
                                                           ("group", "lab:vt_groupnorm", {"norm_groups": 4})])
def test_a_lab_norm_in_a_cnn_computes_the_builtin_norm(builtin: str, piece: str, options: dict[str, Any]) -> None:
    """`norm` of a CNN: a batchnorm piece on every pixel of the feature maps, a groupnorm piece on the maps."""
    def forward(norm: str) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        net = call_builder(MODELS.get("simple_cnn"), {"norm": norm, "channels": [8, 8], **options}, loc="model",
                           provided={"num_classes": 3, "in_channels": 3, "image_size": 8}).double()
        x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        out = net(x)
        out.sum().backward()
        return out, net.features[0].weight.grad

    (out_a, grad_a), (out_b, grad_b) = forward(builtin), forward(piece)
    assert torch.allclose(out_a, out_b, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad_a, grad_b, rtol=1e-8, atol=1e-12)


def test_a_lab_adam_matches_adam_and_resumes_exactly(pieces: list[str], tmp_path: Path) -> None:
    """optimizer.name = "lab:vt_adam" (its state m, v, t in the optimizer's state) against torch's Adam over eight
    steps; then the same run stopped by Ctrl-C after step 5 and resumed ends with the same weights and log."""
    common = {"norm": "batch"}
    adam = deepcourse.run(recipe(common, optimizer={"name": "adam", "lr": 0.01}, epochs=2), run_dir=tmp_path / "adam",
                          report=False).run_dir
    mine = recipe(common, optimizer={"name": "lab:vt_adam", "lr": 0.01}, epochs=2)
    whole = deepcourse.run(mine, run_dir=tmp_path / "whole", report=False).run_dir
    assert_same_curve(adam, whole)

    path = tmp_path / "lab.toml"
    path.write_text(json_as_toml(mine), encoding="utf-8")
    cut = tmp_path / "cut"
    code, out = cli("run", str(path), "--run-dir", str(cut), "--no-report",
                    "--set", "train.callbacks=[{name = 'vt_interrupt_at', step = 5}]")
    assert code == 130, out
    from safetensors.torch import load_file

    saved = cut / "checkpoints" / "step-000000005"
    assert {"state.0.m", "state.0.v"} <= set(load_file(str(saved / "optimizer.safetensors")))  # the rule's state
    assert '"t",\n         5' in (saved / "optimizer.json").read_text()  # and its step count
    code, out = cli("run", "--resume", str(cut), "--no-report", "--set", "train.callbacks=[]")
    assert code == 0, out
    assert logged(cut) == logged(whole)
    a, b = weights(whole), weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def json_as_toml(data: dict[str, Any]) -> str:
    """A recipe dict as TOML (top-level scalars, then one table per section; values in TOML's JSON-like syntax)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines += [f"[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


@pytest.mark.usefixtures("pieces")
def test_lab_names_that_do_not_fit_exit_2_naming_the_key() -> None:
    quickstart = str(RECIPES / "quickstart.toml")
    code, out = cli("check", quickstart, "--set", "model.norm=lab:nope")
    assert code == 2 and "model.norm" in out and "nope" in out and "Traceback" not in out, out
    code, out = cli("check", quickstart, "--set", "model.norm=lab:vt_affine")
    assert code == 2 and "model.norm" in out and "'vt_affine' is a affine layer" in out, out
    assert "batchnorm or groupnorm" in out
    code, out = cli("check", quickstart, "--set", "model.activation=lab:vt_batchnorm")
    assert code == 2 and "model.activation" in out and "relu" in out, out
    code, out = cli("check", quickstart, "--set", "task.loss=lab:vt_adam")
    assert code == 2 and "task.loss" in out and "is a update" in out, out
    code, out = cli("check", quickstart, "--set", "model.norm=batchnorm")  # neither a built-in name nor lab:
    assert code == 2 and "model.norm" in out and "'lab:NAME'" in out, out
    code, out = cli("check", quickstart, "--set", "task.loss=lab:vt_svm", "--set", "model.norm=lab:vt_batchnorm")
    assert code == 0, out


def test_a_lab_loss_with_label_smoothing_exits_2(pieces: list[str], tmp_path: Path) -> None:
    code, out = cli("run", str(RECIPES / "quickstart.toml"), "--run-dir", str(tmp_path / "run"),
                    "--set", "task.loss=lab:vt_svm", "--set", "task.label_smoothing=0.1")
    assert code == 2 and "task.label_smoothing" in out and "lab:vt_svm" in out and "Traceback" not in out, out


def test_a_backward_returning_a_wrong_shaped_dx_exits_2_naming_the_piece(pieces: list[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(json_as_toml(recipe({"linear": "lab:vt_affine_bad_dx"})), encoding="utf-8")
    code, out = cli("run", str(path), "--run-dir", str(tmp_path / "bad"), "--no-report")
    assert code == 2, out
    assert "lab layer 'vt_affine_bad_dx'" in out and "dx of shape (64, 16)" in out and "Traceback" not in out, out
