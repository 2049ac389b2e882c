"""Figures for `deepcourse report`: the confusion matrix and the most confident mistakes of the evaluation split.

Drawn from the best weights over the recipe's `eval.split`, evaluated exactly as `deepcourse evaluate` evaluates it
(`deepcourse.api.evaluate_split`), so a lab report shows which classes the network mixes up, and what those images
look like, with the run's own numbers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepcourse.api import (Figure, Recipe, Task, UserError, evaluate_split, markdown_escape, markdown_table,
                            pyplot)

MAX_MISTAKES = 16


def confusion_figure(matrix: torch.Tensor, names: Sequence[str], path: Path) -> None:
    plt = pyplot()
    n = len(names)
    rates = matrix.double() / matrix.sum(1, keepdim=True).clamp(min=1)
    side = min(12.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.savefig(path)
    plt.close(fig)


def mistakes_figure(images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, names: Sequence[str],
                    path: Path) -> int:
    """A grid of the wrong predictions the model was surest of; returns how many are shown."""
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:MAX_MISTAKES]
    if len(order) == 0:
        return 0
    plt = pyplot()
    cols = min(8, len(order))
    rows = (len(order) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order.tolist()):
        img = images[i].permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ax.set_title(f"{names[int(labels[i])]} -> {names[int(predicted[i])]}\n{float(confidence[i]):.0%}",
                     fontsize=7)
    fig.savefig(path)
    plt.close(fig)
    return len(order)


def write_figures(task: Task, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any], out: Path
                  ) -> tuple[list[Figure], list[str]]:
    split = recipe.eval.split
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []

    def keep(batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        images.append(batch["image"].cpu())
        labels.append(outputs["targets"].cpu())
        probs.append(outputs["logits"].float().exp().cpu())  # the evaluation's log-probabilities (after TTA)

    try:
        evaluate_split(task, model, recipe, artifacts, on_batch=keep)
    except UserError as exc:
        return [], [f"_No {split} figures: {exc}_", ""]
    names = task.class_names
    n = len(names)
    all_images, all_labels, all_probs = torch.cat(images), torch.cat(labels), torch.cat(probs)
    matrix = torch.bincount(all_labels * n + all_probs.argmax(1), minlength=n * n).reshape(n, n)
    out.mkdir(parents=True, exist_ok=True)
    confusion_figure(matrix, names, out / "confusion_matrix.png")
    figures = [Figure("Confusion matrix", "confusion_matrix.png",
                      f"{split} split, {len(all_labels)} images; rows: true class, columns: predicted class")]
    shown = mistakes_figure(all_images, all_labels, all_probs, names, out / "mistakes.png")
    if shown:
        figures.append(Figure("Most confident mistakes", "mistakes.png",
                              f"the {shown} wrong {split} predictions with the highest probability: true -> "
                              f"predicted, probability"))
    per_class = matrix.diag().double() / matrix.sum(1).clamp(min=1)
    rows = [[markdown_escape(name), f"{float(a):.4f}", int(c)] for name, a, c in zip(names, per_class, matrix.sum(1))]
    return figures, ["## Per-class accuracy", "", *markdown_table(["class", "accuracy", "images"], rows), ""]
