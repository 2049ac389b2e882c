"""ImageNet weights for the zoo's torchvision-backed models (`model.weights = "imagenet"`), read from a local file.

The files are torchvision's own (`resnet18-f37072fd.pth`, ...), named as torchvision names them, so a folder filled
once by torchvision on a machine online (torch's hub cache) serves every machine offline: the file is looked for in
$DEEPCOURSE_WEIGHTS, then in torch's hub cache (`torch.hub.get_dir()/checkpoints`). With
DEEPCOURSE_DOWNLOAD_WEIGHTS=1, a file found in neither is downloaded there by torch's hub, from the address
torchvision's weights enum gives (its hash checked). The core loads what matches by name and shape when a run starts
(a CIFAR stem or a new head keeps its fresh weights, and the run says so); `deepcourse evaluate` never reads it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from torch import nn

from deepcourse.api import UserError, use_weights

WEIGHTS_ENV = "DEEPCOURSE_WEIGHTS"
DOWNLOAD_ENV = "DEEPCOURSE_DOWNLOAD_WEIGHTS"

#: what `model.weights` takes: fresh initialisation, or torchvision's ImageNet-1k weights (IMAGENET1K_V1)
Weights = Literal["none", "imagenet"]

#: torchvision's DenseNet files use the names of an older layout ("denselayer1.norm.1.weight"), which torchvision
#: itself renames on load ("denselayer1.norm1.weight")
_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def with_weights(model: nn.Module, arch: str, weights: Weights) -> nn.Module:
    """`model` (torchvision's `arch`), asking for its ImageNet weights when `weights` is 'imagenet'."""
    if weights == "none":
        return model
    rename: Callable[[str], str] | None = (lambda n: _OLD_DENSENET.sub(r"\1\2", n)) if "densenet" in arch else None
    return use_weights(model, lambda: imagenet_file(arch), key="model.weights", rename=rename)


def file_name(arch: str) -> tuple[str, str]:
    """(torchvision's file name, its address) of `arch`'s ImageNet-1k weights."""
    from torchvision.models import get_model_weights

    url = get_model_weights(arch).IMAGENET1K_V1.url
    return url.rsplit("/", 1)[-1], url


def places() -> list[Path]:
    """The folders looked in, in order."""
    import torch

    folders = [Path(os.environ[WEIGHTS_ENV]).expanduser()] if os.environ.get(WEIGHTS_ENV) else []
    return [*folders, Path(torch.hub.get_dir()) / "checkpoints"]


def imagenet_file(arch: str) -> Path:
    """The local file of `arch`'s ImageNet weights; downloaded when DEEPCOURSE_DOWNLOAD_WEIGHTS=1 allows it."""
    name, url = file_name(arch)
    looked = [folder / name for folder in places()]
    for path in looked:
        if path.is_file():
            return path
    if os.environ.get(DOWNLOAD_ENV) == "1":
        import torch

        torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)  # into the hub cache
        return looked[-1]
    raise UserError(f"model.weights = 'imagenet': torchvision's {name} is not in {' nor '.join(map(str, looked))}. "
                    f"Copy it there (or set {WEIGHTS_ENV} to the folder holding it), or set {DOWNLOAD_ENV}=1 on a "
                    f"machine online to download it ({url})")
