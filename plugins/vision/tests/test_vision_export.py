"""Every registered vision model exports to ONNX, TorchScript and torch.export with its preprocessing inside, and the
written file gives the model's logits on images of another batch size (the check `deepcourse export` runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_vision_models import CASES

from deepcourse.api import MODELS, TASKS, call_builder, load_recipe
from deepcourse.testing import EXPORT_FORMATS as FORMATS
from deepcourse.testing import Trained, export_trained

#: nets whose export takes tens of seconds on a CPU (deep graphs): run with the slow tests
DEEP = {"resnet50", "resnet101", "resnet152", "densenet121"}
#: torch.export takes seconds per net: the small ones and one ResNet show it in the fast tests
FAST_EXPORTED = {"simple_cnn", "lenet5", "lenet5_lab", "alexnet", "resnet18", "resnet_mnist", "mlp"}


def cases() -> list:
    found = []
    for name in sorted(e.name for e in MODELS.entries() if e.origin == "vision"):
        for fmt in FORMATS:
            slow = name in DEEP or (fmt == "exported" and name not in FAST_EXPORTED)
            found.append(pytest.param(name, fmt, marks=[pytest.mark.slow] if slow else []))
    return found


@pytest.mark.parametrize("name,fmt", cases())
def test_every_vision_model_round_trips(name: str, fmt: str, tmp_path: Path) -> None:
    options, channels, size = CASES.get(name, ({}, 3, 32))
    facts = {"num_classes": 5, "in_channels": channels, "image_size": size}
    recipe = load_recipe(data={"name": "zoo", "task": {"name": "image-classification"}, "data": {"name": "cifar10"},
                               "model": {"name": name, **options}})
    task = TASKS.get("image-classification")()
    torch.manual_seed(0)
    model = call_builder(MODELS.get(name), options, loc="model", provided=facts)
    out = tmp_path / f"model{FORMATS[fmt]}"
    done = export_trained(Trained(recipe, task, facts, {}, model), fmt, out)
    assert done.max_error < 1e-3 and done.checked_on == {"image": [3, channels, size, size]}
    facts_written = json.loads(done.sidecar.read_text())
    assert facts_written["inputs"] == [{"name": "image", "shape": ["batch", channels, size, size], "dtype": "uint8"}]
    assert facts_written["outputs"][0]["shape"] == [3, 5] and len(facts_written["class_names"]) == 5


def test_a_trained_run_exports_with_its_statistics_and_classes(mnist_like: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deepcourse.api import shipped_recipes
    from deepcourse.testing import cli

    run = tmp_path / "run"
    sets = ["train.max_steps=2", "train.epochs=1", "train.progress=false", "data.batch_size=16"]
    result = CliRunner().invoke(cli, ["run", str(shipped_recipes()["quickstart"]), "--run-dir", str(run), "--no-report",
                                      *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["export", str(run)])
    assert result.exit_code == 0, result.output
    facts = json.loads((run / "export" / "model.onnx.json").read_text())
    artifacts = json.loads((run / "best" / "artifacts.json").read_text())
    assert facts["class_names"] == artifacts["class_names"] and facts["mean"] == artifacts["mean"]
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.zeros((1, *facts["inputs"][0]["shape"][1:]), dtype=np.uint8)
    assert session.run(None, {"image": image})[0].shape == (1, len(facts["class_names"]))
