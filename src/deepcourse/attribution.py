"""Attributions for `deepcourse explain`, on Captum: Grad-CAM, integrated gradients (of the input, or of a layer such
as word embeddings), and the outputs of a model's modules as it runs.

One library serves both kinds of network the course trains: Captum's `LayerGradCam` for CNNs, `IntegratedGradients`
for pixels and `LayerIntegratedGradients` for the embeddings of a tagger, all on plain `nn.Module`s and forward
functions, so a task only says what to attribute (a class score, the log-probability of an entity) and where. The
functions here add what every caller would otherwise repeat: gradients in evaluation mode (cuDNN refuses an RNN's
backward there), float results whatever the run's precision, and Grad-CAM maps at the input's size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: a function from the (attributed) input to one score per example, [B]; or to class scores [B, C] with `target`
Forward = Callable[..., torch.Tensor]


@contextlib.contextmanager
def gradients_in_eval_mode() -> Iterator[None]:
    """Gradients on, cuDNN off for the duration: cuDNN's RNN backward refuses a model in evaluation mode (dropout off,
    which attributions need), and its convolutions are not needed for a few images."""
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        yield


def grad_cam(forward: Forward, layer: nn.Module, inputs: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of `layer` for class `target`: the layer's maps weighted by the mean gradient
    of the class score over each map, summed, kept where positive, and upsampled (bilinear) to the input's height and
    width. Returns [B, H, W] float, non-negative."""
    from captum.attr import LayerAttribution, LayerGradCam

    with gradients_in_eval_mode():
        cam = LayerGradCam(forward, layer).attribute(inputs, target=target, relu_attributions=True)
    cam = cam.detach().float()
    if cam.dim() == 3:
        cam = cam.unsqueeze(1)
    cam = LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    return cam[:, 0].clamp(min=0)  # bilinear weights are non-negative: the clamp only removes rounding below 0


def integrated_gradients(forward: Forward, inputs: torch.Tensor, *, target: int | None = None,
                         baselines: torch.Tensor | None = None, steps: int = 32) -> tuple[torch.Tensor, float]:
    """Integrated gradients (Sundararajan et al. 2017) of the score `forward` gives (class `target` of it when it
    gives class scores), from `baselines` (default zeros) to `inputs`: attributions shaped like `inputs`, and the
    convergence delta (how far their sum is from the score difference; small means `steps` sufficed)."""
    from captum.attr import IntegratedGradients

    with gradients_in_eval_mode():
        attributions, delta = IntegratedGradients(forward).attribute(
            inputs, baselines=baselines, target=target, n_steps=steps, internal_batch_size=steps,
            return_convergence_delta=True)
    return attributions.detach().float(), float(delta.abs().max())


def layer_integrated_gradients(forward: Forward, layer: nn.Module, inputs: torch.Tensor, *,
                               baselines: torch.Tensor, steps: int = 32) -> tuple[torch.Tensor, float]:
    """Integrated gradients of `forward`'s score with respect to the output of `layer` (word embeddings, say): the
    layer's output is moved from what it gives for `baselines` (padding ids: zero vectors) to what it gives for
    `inputs` (ids). Attributions are shaped like the layer's output; plus the convergence delta."""
    from captum.attr import LayerIntegratedGradients

    with gradients_in_eval_mode():
        attributions, delta = LayerIntegratedGradients(forward, layer).attribute(
            inputs, baselines=baselines, n_steps=steps, internal_batch_size=steps, return_convergence_delta=True)
    return attributions.detach().float(), float(delta.abs().max())


@dataclass
class ModuleOutput:
    """What one module returned during a forward pass: its name in `named_modules()`, the module, the output object
    itself (`returned`: compare with `is` to see which module produced a tensor that another passed on) and a copy of
    its value taken at once (`output`: a later in-place operation cannot change it)."""

    name: str
    module: nn.Module
    returned: Any
    output: Any


def module_outputs(model: nn.Module, run: Callable[[], Any]) -> list[ModuleOutput]:
    """Call `run()` (a forward pass of `model`, without gradients) with a hook on every module, and return what each
    returned, in the order they finished (a container after its children); a module called twice appears twice. The
    hooks are removed afterwards."""
    found: list[ModuleOutput] = []
    names = {id(m): name for name, m in model.named_modules()}

    def keep(module: nn.Module, _: Any, output: Any) -> None:
        found.append(ModuleOutput(names.get(id(module), "?"), module, output,
                                  output.detach().clone() if isinstance(output, torch.Tensor) else output))

    handles = [m.register_forward_hook(keep) for _, m in model.named_modules() if m is not model]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return found
