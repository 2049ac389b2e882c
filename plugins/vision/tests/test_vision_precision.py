"""Image classification defaults to precision "auto": a tiny conv run on this CPU trains, channels-last,
in bf16 exactly where the CPU computes bfloat16 fast, and its inputs follow the model's layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vision_fixtures import RECIPES


def test_a_tiny_conv_run_with_auto_precision_trains(tmp_path: Path, mnist_like: Path) -> None:
    import deepcourse
    from deepcourse.testing import native_bf16

    result = deepcourse.run(str(RECIPES / "quickstart.toml"), "train.max_steps=4", "train.progress=false",
                            "train.device='cpu'", run_dir=tmp_path / "run", report=False)
    info = json.loads((result.run_dir / "run.json").read_text())
    native = native_bf16(torch.device("cpu"))
    assert info["settings_from"]["mixed_precision"] == "default"  # the task's: auto
    assert (info["mixed_precision"], info["channels_last"]) == ("bf16" if native else "no", True)
    assert "auto: this CPU" in info["precision_reason"]
    assert result.best["accuracy"] >= 0.0 and result.summary["steps"] == 4


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_task_feeds_channels_last_inputs_when_the_engine_chose_it(mnist_like: Path, channels_last: bool) -> None:
    """The engine lays the model out (precision "auto", train.channels_last: tested in the core); the task gives its
    inputs the model's layout, read through the public `uses_channels_last`."""
    from deepcourse.api import build_task, load_recipe, uses_channels_last

    task = build_task(load_recipe(RECIPES / "quickstart.toml", ["train.device='cpu'"]))
    net = torch.nn.Conv2d(3, 2, 3)  # RGB: the inputs' layout is unambiguous
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    assert uses_channels_last(net) is channels_last
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].stride(1) == 1))  # channels innermost
    task._forward(net, torch.zeros(2, 3, 8, 8))
    assert seen == [channels_last]
