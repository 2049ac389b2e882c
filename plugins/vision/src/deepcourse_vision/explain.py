"""`deepcourse explain` for CNNs: what the first layer learnt, what each stage responds to in an image, and where the
network looked for its answer.

- filters: the first convolution's kernels as an image grid (colour for RGB input, grey otherwise);
- stages and their feature maps: the model runs once with a hook on every module (`module_outputs`), and the rule
  below finds its stages; each stage's strongest channels (largest mean activation) for the image are drawn;
- Grad-CAM (Captum's LayerGradCam) on the last stage, and integrated gradients (from a black image) over the pixels,
  for the predicted class and for `--target`; and the top-k probabilities.

The stage rule, for any `nn.Module` of the zoo (torchvision's ResNet and DenseNet included): in the order modules
finish their forward, keep each 4-D output [N, C, H, W] with more than one pixel that is not a pooling layer's
result (nor that result passed on unchanged, as a Sequential ending in a pool returns it); a stage is a run of such
outputs of one spatial size, and ends at its last (a ResNet's `layer4`, LeNet's second activation). Grad-CAM weighs
the last stage. A model names another module with an `explain_layer` attribute (a name of `named_modules()`), and
`--layer` overrides both. A network without convolutions (the MLP) gets the probabilities and integrated gradients only.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepcourse.api import (
    ExplainOptions,
    Explanation,
    Figure,
    ModuleOutput,
    UserError,
    did_you_mean,
    grad_cam,
    integrated_gradients,
    markdown_escape,
    markdown_table,
    module_outputs,
    pyplot,
)

from .data import load_image_files

DEFAULT_TOPK = 5
DEFAULT_CHANNELS = 8
#: first-layer filters drawn (a VGG's 64 fit; AlexNet's 96 too)
MAX_FILTERS = 96
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, nn.LPPool2d, nn.FractionalMaxPool2d)


@dataclass
class Stage:
    """The end of a run of feature maps of one size: the module's name, the module, and its output for the image."""

    name: str
    module: nn.Module
    maps: torch.Tensor  # [C, H, W], float

    @property
    def shape(self) -> str:
        c, h, w = self.maps.shape
        return f"{c}x{h}x{w}"


def find_stages(outputs: Sequence[ModuleOutput]) -> list[Stage]:
    """The stages of a forward pass (see the module docstring for the rule)."""
    pooled: list[ModuleOutput] = []
    kept: list[ModuleOutput] = []
    for o in outputs:
        if isinstance(o.module, POOLS):
            pooled.append(o)
            continue
        if not isinstance(o.output, torch.Tensor) or o.output.dim() != 4 or o.output.shape[-1] * o.output.shape[-2] < 2:
            continue
        # passed on unchanged (a Sequential ending in a pool); an in-place ReLU after a pool returns the same tensor
        # too, but changed: that is a new map
        if any(o.returned is p.returned and torch.equal(o.output, p.output) for p in pooled):
            continue
        kept.append(o)
    stages: list[Stage] = []
    for i, o in enumerate(kept):
        last_of_run = i + 1 == len(kept) or kept[i + 1].output.shape[-2:] != o.output.shape[-2:]
        if last_of_run:
            stages.append(Stage(o.name, o.module, o.output[0].float()))
    return stages


def cam_layer(model: nn.Module, stages: Sequence[Stage], layer: str | None) -> tuple[str, nn.Module] | None:
    """The module Grad-CAM weighs: `--layer`, else the model's `explain_layer`, else the last stage."""
    named = dict(model.named_modules())
    chosen, key = (layer, "--layer") if layer else (getattr(model, "explain_layer", None), "explain_layer")
    if chosen:
        if chosen not in named or chosen == "":
            names = [n for n in named if n]
            raise UserError(f"{key} {chosen}: the model has no module of that name.{did_you_mean(chosen, names)} "
                            f"Its stages: {', '.join(s.name for s in stages) or 'none'}")
        return chosen, named[chosen]
    return (stages[-1].name, stages[-1].module) if stages else None


def _first_conv(outputs: Sequence[ModuleOutput]) -> tuple[str, nn.Conv2d] | None:
    for o in outputs:
        if isinstance(o.module, nn.Conv2d):
            return o.name, o.module
    return None


def _class_index(task: Any, target: str) -> int:
    names = task.class_names
    if target in names:
        return names.index(target)
    if target.isdigit() and int(target) < len(names):
        return int(target)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise UserError(f"--target {target}: not a class of this run.{did_you_mean(target, names)} Its classes: {shown} "
                    f"(or an index 0..{len(names) - 1})")


def explain_images(task: Any, model: nn.Module, inputs: Sequence[str], *, options: ExplainOptions,
                   device: torch.device, out: Path) -> Iterator[Explanation]:
    """The first layer's filters, then one explanation per image file."""
    if options.nbest is not None:
        raise UserError("--nbest: does not apply to an image classifier (n-best paths are a tagger's); use --topk K "
                        "for the K most probable classes")
    target = _class_index(task, options.target) if options.target is not None else None
    images = load_image_files(list(inputs), channels=task.in_channels, size=task.source_size).to(device)
    inner = getattr(model, "module", model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return task._forward(model, x).float()

    first = task.pipeline(images[:1], train=False)
    outputs = module_outputs(inner, lambda: forward(first))
    stages = find_stages(outputs)
    layer = cam_layer(inner, stages, options.layer)
    yield _filters(_first_conv(outputs), stages, layer, out)
    for index, path in enumerate(inputs):
        yield _explain_one(task, model, inner, forward, images[index:index + 1], index + 1, str(path), target,
                           layer, options, out)


def _filters(first: tuple[str, nn.Conv2d] | None, stages: Sequence[Stage], layer: tuple[str, nn.Module] | None,
             out: Path) -> Explanation:
    explanation = Explanation("The network")
    rows = [[markdown_escape(s.name), s.shape] for s in stages]
    explanation.numbers = {"stages": [{"name": s.name, "shape": list(s.maps.shape)} for s in stages],
                           "cam_layer": layer[0] if layer else None}
    if first is None:
        explanation.notes += ["_No convolution: this network sees the image as one flat vector, so it has no filters, "
                              "feature maps or Grad-CAM; the probabilities and integrated gradients below still "
                              "apply._", ""]
        return explanation
    name, conv = first
    weights = conv.weight.detach().float().cpu()[:MAX_FILTERS]  # [out, in, k, k]
    plt = pyplot()
    n = len(weights)
    cols = min(16, n)
    rows_n = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(0.7 * cols, 0.75 * rows_n + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, w in zip(axes.flat, weights):
        w = (w - w.min()) / (w.max() - w.min()).clamp(min=1e-12)  # each filter on its own scale
        ax.imshow(w.permute(1, 2, 0).numpy() if w.shape[0] == 3 else w.mean(0).numpy(),
                  cmap=None if w.shape[0] == 3 else "gray", interpolation="nearest")
    k = conv.kernel_size
    fig.suptitle(f"{name}: {conv.out_channels} filters of {k[0]}x{k[1]}" +
                 (f" (the first {n})" if n < conv.out_channels else ""), fontsize=9)
    fig.savefig(out / "filters.png")
    plt.close(fig)
    colour = "in colour (the input is RGB)" if weights.shape[1] == 3 else \
        "in grey" + (" (the mean over input channels)" if weights.shape[1] > 1 else "")
    explanation.figures.append(Figure(
        "First-layer filters", "filters.png",
        f"The kernels of the first convolution (`{name}`), each scaled to its own range, {colour}: edge, colour "
        f"and blob detectors in a trained network, noise in an untrained one."))
    explanation.numbers["filters"] = {"layer": name, "shape": list(conv.weight.shape)}
    explanation.notes += ["Stages found (the end of each run of feature maps of one size; Grad-CAM weighs "
                          f"`{layer[0]}`):" if layer else "Stages found:", "",
                          *markdown_table(["stage", "channels x height x width"], rows), ""]
    return explanation


def _explain_one(task: Any, model: nn.Module, inner: nn.Module, forward: Any, image: torch.Tensor, index: int,
                 source: str, target: int | None, layer: tuple[str, nn.Module] | None, options: ExplainOptions,
                 out: Path) -> Explanation:
    names = task.class_names
    x = task.pipeline(image, train=False)
    seen = task.pipeline.run(image, task.pipeline.transforms, train=False)  # what the model sees, before normalising
    seen = task.pipeline.to_float(seen)[0].cpu()
    with torch.no_grad():
        probs = forward(x).softmax(-1)[0].cpu()
    k = min(options.topk or DEFAULT_TOPK, len(names))
    top = probs.topk(k)
    predicted = int(top.indices[0])
    classes = [predicted] + ([target] if target is not None and target != predicted else [])
    stem = f"{index:02d}_{Path(source).stem}"
    explanation = Explanation(f"Image {index}: {markdown_escape(Path(source).name)}", numbers={
        "input": source, "predicted": names[predicted], "probability": round(float(probs[predicted]), 6),
        "top": [{"class": names[i], "probability": round(float(p), 6)} for p, i in zip(top.values.tolist(),
                                                                                         top.indices.tolist())]})
    maps: dict[int, dict[str, torch.Tensor]] = {}
    baseline = task.pipeline(torch.zeros_like(image), train=False)  # a black image, as the network would see it
    deltas = {}
    for c in classes:
        maps[c] = {}
        if layer is not None:
            maps[c]["cam"] = grad_cam(forward, layer[1], x, c)[0].cpu()
        attributions, deltas[c] = integrated_gradients(forward, x, target=c, baselines=baseline, steps=options.steps)
        maps[c]["ig"] = attributions[0].abs().sum(0).cpu()
    explanation.numbers["classes"] = {
        names[c]: {"probability": round(float(probs[c]), 6), "ig_convergence_delta": round(deltas[c], 6),
                   **({"grad_cam_max": round(float(maps[c]["cam"].max()), 6)} if "cam" in maps[c] else {})}
        for c in classes}
    file = f"{stem}_attribution.png"
    _attribution_figure(seen, maps, classes, probs, names, top, out / file, layer[0] if layer else None)
    what = f"Grad-CAM on `{layer[0]}` and " if layer else ""
    explanation.figures.append(Figure(
        "Where the network looked", file,
        f"The image as the network sees it; {what}integrated gradients ({options.steps} steps from a black image, "
        f"|attribution| summed over channels) for the predicted class {names[predicted]} "
        f"({float(probs[predicted]):.1%})" + (f" and for --target {names[target]} ({float(probs[target]):.1%})"
                                              if len(classes) > 1 else "") +
        f"; and the {k} most probable classes."))
    if layer is not None:
        outputs = module_outputs(inner, lambda: forward(x))
        stages = find_stages(outputs)
        file = f"{stem}_feature_maps.png"
        channels = _feature_maps(stages, seen, options.channels or DEFAULT_CHANNELS, out / file)
        explanation.figures.append(Figure(
            "Feature maps", file,
            f"The {channels} strongest channels (largest mean activation for this image) at the end of each stage; "
            f"each map on its own scale, bright is high. Early stages keep the image's layout; later ones are "
            f"smaller and more abstract."))
    explanation.notes += [*markdown_table(["class", "probability"],
                                          [[markdown_escape(names[i]), f"{p:.4f}"]
                                           for p, i in zip(top.values.tolist(), top.indices.tolist())]), ""]
    return explanation


def _show(ax: Any, image: torch.Tensor) -> None:
    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)


def _attribution_figure(seen: torch.Tensor, maps: dict[int, dict[str, torch.Tensor]], classes: list[int],
                        probs: torch.Tensor, names: Sequence[str], top: Any, path: Path, layer: str | None) -> None:
    plt = pyplot()
    panels = 1 + sum(len(m) for m in maps.values()) + 1
    fig, axes = plt.subplots(1, panels, figsize=(2.3 * panels, 2.6))
    _show(axes[0], seen)
    axes[0].set_title("input", fontsize=8)
    i = 1
    for c in classes:
        for kind, values in maps[c].items():
            values = values / values.max().clamp(min=1e-12)
            if values.shape != seen.shape[-2:]:  # the display and the model's input differ in size
                values = torch.nn.functional.interpolate(values[None, None], size=seen.shape[-2:],
                                                         mode="bilinear")[0, 0]
            _show(axes[i], seen.mean(0, keepdim=True).expand(3, -1, -1) * 0.6)
            axes[i].imshow(values.numpy(), cmap="jet" if kind == "cam" else "hot", alpha=0.5 if kind == "cam" else
                           0.8, vmin=0, vmax=1)
            axes[i].set_title(f"{'Grad-CAM' if kind == 'cam' else 'integrated gradients'}\n{names[c]} "
                              f"({float(probs[c]):.1%})", fontsize=8)
            i += 1
    for ax in axes[:-1]:
        ax.axis("off")
    bar = axes[-1]  # the class names written on the bars: tick labels would run into the panel before
    labels = [names[j] for j in top.indices.tolist()][::-1]
    values = top.values.tolist()[::-1]
    bar.barh(range(len(labels)), values, color="tab:blue", alpha=0.35)
    for y, (label, v) in enumerate(zip(labels, values)):
        bar.text(0.02, y, f"{label} {v:.1%}", va="center", fontsize=7)
    bar.set_yticks([])
    bar.set_xlim(0, 1)
    bar.set_title("top classes", fontsize=8)
    bar.tick_params(axis="x", labelsize=7)
    fig.savefig(path)
    plt.close(fig)


def _feature_maps(stages: Sequence[Stage], seen: torch.Tensor, channels: int, path: Path) -> int:
    plt = pyplot()
    cols = min(channels, max(s.maps.shape[0] for s in stages))
    fig, axes = plt.subplots(len(stages), cols + 1, figsize=(1.1 * (cols + 1), 1.25 * len(stages) + 0.3),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, stage in zip(axes, stages):
        _show(row[0], seen)
        row[0].set_title(f"{stage.name}\n{stage.shape}", fontsize=6)
        strongest = stage.maps.mean((1, 2)).argsort(descending=True)[:cols]
        for ax, c in zip(row[1:], strongest.tolist()):
            ax.imshow(stage.maps[c].cpu().numpy(), cmap="viridis", interpolation="nearest")
            ax.set_title(f"ch {c}", fontsize=6)
    fig.savefig(path)
    plt.close(fig)
    return cols
