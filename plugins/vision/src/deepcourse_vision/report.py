"""Figures for `deepcourse report`: the confusion matrix and the most confident mistakes of the evaluation split.

Drawn from the best weights over the recipe's `eval.split`, evaluated exactly as `deepcourse evaluate` evaluates it
(`deepcourse.api.evaluate_split`), so a lab report shows which classes the network mixes up, and what those images
look like, with the run's own numbers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from deepcourse.api import (
    Figure,
    Recipe,
    Task,
    UserError,
    evaluate_split,
    grouped_bars,
    heatmap,
    markdown_escape,
    markdown_table,
    pyplot,
)

MAX_MISTAKES = 16
#: classes up to which the per-class scores are also drawn as bars (the table always lists them all)
MAX_CLASS_BARS = 30


class ReportedClassifier(Protocol):
    """What a report reads of the image-classification task (besides its being a Task, which `evaluate_split`
    runs). Stated here, not imported from the task module, so the task depends on this module and never the other
    way round."""

    class_names: list[str]


def confusion_figure(matrix: torch.Tensor, names: Sequence[str], path: Path, *, title: str) -> None:
    """Rows: true class, columns: predicted; coloured by the share of the true class (the diagonal is each class's
    recall), with the counts written in when the matrix is small enough to read them."""
    n = len(names)
    rates = matrix.double() / matrix.sum(1, keepdim=True).clamp(min=1)
    counts = [[str(int(v)) if v else "" for v in row] for row in matrix.tolist()] if n <= 20 else None
    heatmap(path, rates.numpy(), names, names, title=title, xlabel="predicted class", ylabel="true class",
            colorbar="share of the true class's images", vmin=0.0, vmax=1.0, annotations=counts)


def class_scores(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall and F1 per class from a confusion matrix (rows: true, columns: predicted); a class never
    predicted has precision 0, one with no images recall 0, as scikit-learn's zero_division=0 gives."""
    matrix = matrix.double()
    hits = matrix.diag()
    precision = hits / matrix.sum(0).clamp(min=1)
    recall = hits / matrix.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(hits))
    return {"precision": precision, "recall": recall, "f1": f1, "support": matrix.sum(1)}


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


def write_figures(task: ReportedClassifier, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any], out: Path
                  ) -> tuple[list[Figure], list[str]]:
    split = recipe.eval.split
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []

    def keep(batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        images.append(batch["image"].cpu())
        labels.append(outputs["targets"].cpu())
        probs.append(outputs["logits"].float().exp().cpu())  # the evaluation's log-probabilities (after TTA)

    assert isinstance(task, Task)  # and a ReportedClassifier: mypy reads the two together from here on
    try:
        evaluate_split(task, model, recipe, artifacts, on_batch=keep)
    except UserError as exc:
        return [], [f"_No {split} figures: {exc}_", ""]
    names = task.class_names
    n = len(names)
    all_images, all_labels, all_probs = torch.cat(images), torch.cat(labels), torch.cat(probs)
    matrix = torch.bincount(all_labels * n + all_probs.argmax(1), minlength=n * n).reshape(n, n)
    out.mkdir(parents=True, exist_ok=True)
    accuracy = float(matrix.diag().sum()) / max(int(matrix.sum()), 1)
    confusion_figure(matrix, names, out / "confusion_matrix.png",
                     title=f"Confusion matrix ({split}, {len(all_labels):,} images, accuracy {accuracy:.4f})")
    figures = [Figure("Confusion matrix", "confusion_matrix.png",
                      f"{split} split, {len(all_labels)} images; rows: true class, columns: predicted class; colour: "
                      f"share of the true class's images, so the diagonal is each class's recall")]
    shown = mistakes_figure(all_images, all_labels, all_probs, names, out / "mistakes.png")
    if shown:
        figures.append(Figure("Most confident mistakes", "mistakes.png",
                              f"the {shown} wrong {split} predictions with the highest probability: true -> "
                              f"predicted, probability"))
    scores = class_scores(matrix)
    if n <= MAX_CLASS_BARS:
        grouped_bars(out / "per_class.png", list(names),
                     {"precision": scores["precision"].tolist(), "recall": scores["recall"].tolist(),
                      "F1": scores["f1"].tolist()},
                     title=f"Precision, recall and F1 per class ({split})", xlabel="class", ylabel="score",
                     decimals=3)
        figures.append(Figure("Precision, recall and F1 per class", "per_class.png",
                              f"over the {len(all_labels):,} {split} images; recall is the class's accuracy"))
    rows = [[markdown_escape(name), f"{float(p):.4f}", f"{float(r):.4f}", f"{float(f):.4f}", int(c)]
            for name, p, r, f, c in zip(names, scores["precision"], scores["recall"], scores["f1"],
                                         scores["support"])]
    macro = [f"{float(scores[k].mean()):.4f}" for k in ("precision", "recall", "f1")]
    rows.append(["**macro average**", *macro, int(matrix.sum())])
    return figures, ["## Per-class precision, recall and F1", "",
                     *markdown_table(["class", "precision", "recall (accuracy)", "F1", "images"], rows), "",
                     f"Precision: of the {split} images predicted as the class, the share that are; recall: of the "
                     f"class's images, the share predicted as it (the per-class accuracy). Macro average: the mean "
                     f"over classes, each counted once.", ""]
