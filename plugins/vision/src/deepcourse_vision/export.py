"""What `deepcourse export` writes for an image classifier: the network with its evaluation preprocessing inside.

The exported graph takes uint8 images [N, C, S, S] as the files decode (S: the training images' size, `source_size`),
runs the evaluation transforms (a centre crop where training cropped at random) and the normalisation, then the
network, and returns the logits. So a user feeds decoded pixels and needs no statistics; the facts still list mean
and std for those who feed other inputs. Test-time augmentation (`eval.tta`) is not part of the file.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepcourse.api import ExportGraph

#: the image-classification task (not imported: `.task` imports this module)
ImageClassification = Any


class Preprocessed(nn.Module):
    """uint8 images -> evaluation transforms -> (x / 255 - mean) / std -> the network's logits.

    The normalisation is an affine map per channel held as buffers (the pipeline's own caches tensors per device,
    which an exporter would see as loose constants)."""

    scale: torch.Tensor  # buffers (nn.Module types its attributes as tensor-or-module)
    shift: torch.Tensor

    def __init__(self, task: ImageClassification, model: nn.Module) -> None:
        super().__init__()
        self.model, self.pipeline = model, task.pipeline
        mean, std = task.pipeline.mean, task.pipeline.std
        channels = task.in_channels
        mean_t = torch.tensor(mean if mean is not None else [0.0] * channels).view(1, -1, 1, 1)
        std_t = torch.tensor(std if std is not None else [1.0] * channels).view(1, -1, 1, 1)
        self.register_buffer("scale", 1 / std_t)
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.pipeline.run(image, self.pipeline.transforms, train=False)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return self.model(x * self.scale + self.shift)


def export_graph(task: ImageClassification, model: nn.Module) -> ExportGraph:
    """The preprocessed classifier on random images (two to write the file, three to check it: the batch axis
    stays free) and the facts: input layout, class names, statistics."""
    generator = torch.Generator().manual_seed(0)
    shape = (task.in_channels, task.source_size, task.source_size)
    inputs, check = (torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8) for n in (2, 3))
    facts: dict[str, Any] = {
        "preprocessing": "input: uint8 images [batch, channels, size, size] as decoded (0-255, RGB or grey as "
                         "trained); the evaluation transforms and the normalisation run inside the graph",
        "class_names": list(task.class_names), "image_size": task.source_size, "channels": task.in_channels,
        "mean": task.pipeline.mean, "std": task.pipeline.std,
        "decode": "softmax over the logits; the class is class_names[argmax]"}
    return ExportGraph(Preprocessed(task, model), {"image": inputs}, ["logits"], dynamic={"image": {0: "batch"}},
                       check={"image": check}, facts=facts)

