"""The `image-classification` task: cross-entropy training with batched on-device augmentation, accuracy / top-k /
per-class accuracy / confusion matrix evaluation with optional test-time augmentation, and `predict` on files.

Data flow: the dataset builder gives uint8 tensors (decoded once, cached); `setup_data` picks the splits (carving
validation from train when the dataset has none and `data.val_split` asks for it), measures the training set's
per-channel mean/std and wraps each split in an `ArrayDataset`, so the
DataLoader fetches a batch with one `index_select`. The steps convert, augment and normalise that batch on the
training device with an `ImagePipeline` built from `task.transforms`.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from deepcourse.api import (
    DATASETS,
    TASKS,
    Accuracy,
    ArrayDataset,
    ConfusionMatrix,
    DataBundle,
    DataError,
    DataSection,
    ExplainOptions,
    Explanation,
    ExportGraph,
    Figure,
    MeanLoss,
    MetricCollection,
    ModelSection,
    PairedItem,
    Recipe,
    RecipeError,
    Task,
    TopKAccuracy,
    call_builder,
    lab_choice,
    lab_loss,
    resolve_splits,
    splits_to_read,
    uses_channels_last,
)

from .augment import MULTI_CROP_WEIGHTS, multi_crop_views
from .data import ImageData, ImageSplit, load_image_files
from .transforms import ImagePipeline, TransformSpec, build_transforms

TTA = Literal["none", "flip", "ten_crop", "multi_crop"]
if TYPE_CHECKING:
    Loss = str
else:  # cross-entropy, or a student's softmax or SVM loss "lab:NAME", checked when the recipe is validated
    Loss = lab_choice(Literal["cross_entropy"], "loss", "softmax", "svm")


def csv_row(values: Sequence[Any]) -> str:
    """One CSV line (class names may hold commas or quotes)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale, exact, from a 256-bin histogram per channel
    (a bincount is ~15x faster than summing a float copy of CIFAR-10)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        m = float((counts * values).sum() / counts.sum())
        var = float((counts * (values - m) ** 2).sum() / counts.sum())
        mean.append(round(m, 6))
        std.append(round(max(var, 1e-12) ** 0.5, 6))
    return mean, std


@TASKS.register("image-classification")
class ImageClassification(Task):
    """Classify images: cross-entropy with label smoothing, batched augmentation, TTA, per-class metrics."""

    monitor = "accuracy"
    monitor_mode = "max"
    default_precision = "auto"
    faster_recipes = {"cifar10": "cifar_fast"}

    def __init__(
        self,
        label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        transforms: list[TransformSpec] = [],  # noqa: B006 - read-only default
        normalize: bool = True,
        mean: list[float] | None = None,
        std: list[Annotated[float, Field(gt=0)]] | None = None,
        channels_last: bool = False,
        topk: Annotated[int, Field(gt=1)] = 5,
        loss: Loss = "cross_entropy",
    ) -> None:
        """label_smoothing: cross-entropy target smoothing (training loss only; evaluation reports plain CE).
        transforms: e.g. [{name = "random_crop", padding = 4}, {name = "hflip"}], run in order on the device;
            each also says what it does at evaluation (random_crop: centre crop, flips: nothing).
        normalize: subtract the training set's per-channel mean and divide by its std (or `mean`/`std`).
        channels_last: NHWC memory format for the model and its inputs, whatever the engine chose; false leaves it
            to the engine (train.channels_last, on with precision auto's bf16), whose choice the inputs follow.
        topk: also report top-k accuracy when there are more than k classes.
        loss: the training loss: 'cross_entropy', or a lab softmax or SVM loss 'lab:NAME' (the student's, on the
            logits); evaluation reports plain cross-entropy either way."""
        super().__init__()
        if loss != "cross_entropy" and label_smoothing:
            raise RecipeError(f"task.label_smoothing: smooths cross-entropy's targets; the lab loss '{loss}' "
                              f"computes its own (set label_smoothing = 0)")
        self.label_smoothing = label_smoothing
        self.train_loss = None if loss == "cross_entropy" else lab_loss(loss, key="task.loss")
        self.transforms = build_transforms(transforms)
        self.normalize, self.mean, self.std = normalize, mean, std
        self.channels_last = channels_last
        self.topk = topk
        self.class_names: list[str] = []
        self.in_channels = 0
        self.source_size = 0
        self.pipeline = ImagePipeline(self.transforms)

    @staticmethod
    def evaluation_options(tta: TTA = "none") -> None:
        """tta: test-time augmentation; 'flip' averages the probabilities of each image and its mirror,
        'ten_crop' those of AlexNet's ten views (4 corner + centre crops where random_crop crops, and mirrors),
        'multi_crop' the logits of airbench's six (the image and its mirror, 1/4 each; both shifted one pixel up-left
        and down-right, and mirrored, 1/8 each)."""

    @property
    def tta(self) -> str:
        return self.eval_options.get("tta", "none")

    # -- data --------------------------------------------------------------------------------------------------------
    def setup_data(self, data: DataSection, *, splits: Sequence[str], seed: int,
                   artifacts: Mapping[str, Any] | None = None) -> DataBundle:
        if self.tta == "ten_crop":
            self.pipeline.ten_crop_index()  # no random_crop to take the crops from: fail before loading any data
        out: dict[str, ImageSplit] = {}
        class_names: list[str] = []
        if splits:
            wanted = splits_to_read(splits, val_split=data.val_split, holdout=data.holdout)
            raw = self._load(data, sorted(wanted), seed, artifacts)
            out = resolve_splits(raw.splits, splits, dataset=data.name, val_split=data.val_split, seed=seed,
                                 source=raw.source, has=raw.available, holdout=data.holdout)
            self._check_labels(raw, out)
            class_names = raw.class_names
        elif artifacts is None:
            raise DataError("no saved artifacts (class names, statistics) to predict with; is this a finished run?")
        self._fit_state(out, class_names, artifacts)
        bundle_splits = {s: ArrayDataset(image=v.images, label=v.labels, **self._identity(s, len(v)))
                         for s, v in out.items()}
        image_size = self._model_input_size()
        facts = {"num_classes": len(self.class_names), "in_channels": self.in_channels, "image_size": image_size}
        saved = {"class_names": self.class_names, "in_channels": self.in_channels, "source_size": self.source_size,
                 "mean": self.pipeline.mean, "std": self.pipeline.std, "dataset": data.name}
        return DataBundle(bundle_splits, facts=facts, artifacts=saved)

    def _identity(self, split: str, n: int) -> dict[str, torch.Tensor]:
        """An `index` column (each image's position in its split) for the training batches, when a transform
        needs it (alternating_flip); none otherwise."""
        needed = split == "train" and any(t.per_sample for t in self.transforms)
        return {"index": torch.arange(n)} if needed else {}

    def _load(self, data: DataSection, wanted: list[str], seed: int, artifacts: Mapping[str, Any] | None) -> ImageData:
        provided: dict[str, Any] = {"data_dir": data.data_dir, "splits": tuple(wanted), "seed": seed}
        if artifacts:  # evaluate / predict / resume: decode new files exactly as the training files were
            provided.update(classes=list(artifacts["class_names"]), size=artifacts["source_size"],
                            channels=artifacts["in_channels"])
        raw = call_builder(DATASETS.get(data.name), data.options, loc="data", provided=provided)
        if not isinstance(raw, ImageData):
            raise TypeError(f"dataset builder '{data.name}' returned {type(raw).__name__}, not ImageData")
        if artifacts and raw.class_names != list(artifacts["class_names"]):
            raise DataError(f"{raw.source}: its classes ({', '.join(raw.class_names)}) differ from the ones the "
                            f"model was trained on ({', '.join(artifacts['class_names'])})")
        return raw

    @staticmethod
    def _check_labels(raw: ImageData, out: Mapping[str, ImageSplit]) -> None:
        for split, part in out.items():
            if len(part) and (int(part.labels.min()) < 0 or int(part.labels.max()) >= len(raw.class_names)):
                raise DataError(f"{raw.source}: '{split}' labels outside 0..{len(raw.class_names) - 1}")

    def _fit_state(self, out: Mapping[str, ImageSplit], class_names: list[str],
                   artifacts: Mapping[str, Any] | None) -> None:
        """Class names, channels, size and normalisation statistics: from the training run's artifacts when there
        are any (evaluate, predict, resume), else from the training split."""
        if artifacts:
            self.class_names = list(artifacts["class_names"])
            self.in_channels, self.source_size = int(artifacts["in_channels"]), int(artifacts["source_size"])
            mean, std = artifacts.get("mean"), artifacts.get("std")
        else:
            if "train" not in out:
                raise DataError("the class names and statistics the model needs come from the train split, which "
                                "is not loaded")
            _, self.in_channels, h, w = out["train"].images.shape
            if h != w:
                raise DataError(f"images are {w}x{h}; models need square images: set data.size (imagefolder) "
                                f"to resize them")
            self.class_names, self.source_size = list(class_names), h
            mean = std = None
            if self.normalize:
                mean, std = self.mean, self.std
                if mean is None or std is None:
                    measured = channel_stats(out["train"].images)
                    mean = measured[0] if mean is None else mean
                    std = measured[1] if std is None else std
        for key, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != self.in_channels:
                raise RecipeError(f"task.{key}: has {len(values)} values but the images have {self.in_channels} "
                                  f"channel(s)")
        for split, part in out.items():
            if part.images.shape[1:] != (self.in_channels, self.source_size, self.source_size):
                raise DataError(f"'{split}' images are {tuple(part.images.shape[1:])}, the model was trained on "
                                f"{(self.in_channels, self.source_size, self.source_size)}")
        self.pipeline = ImagePipeline(self.transforms, mean, std)

    #: CIFAR-10-sized input for the model zoo's parameter and FLOP counts
    example_facts = {"num_classes": 10, "in_channels": 3, "image_size": 32}

    def setup_example(self, facts: Mapping[str, Any], batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Set up as for a trained run on images of `facts`' shape (no normalisation statistics) and return a uint8
        batch of them (for FLOP counting)."""
        size = facts["image_size"]
        self._fit_state({}, [], {"class_names": [str(i) for i in range(facts["num_classes"])],
                                 "in_channels": facts["in_channels"], "source_size": size})
        return {"image": torch.zeros(batch_size, facts["in_channels"], size, size, dtype=torch.uint8),
                "label": torch.zeros(batch_size, dtype=torch.long)}

    def _model_input_size(self) -> int:
        probe = torch.zeros(1, self.in_channels, self.source_size, self.source_size, dtype=torch.uint8)
        shape = self.pipeline(probe, train=False).shape
        if shape[-1] != shape[-2]:
            raise RecipeError(f"task.transforms: produce {shape[-1]}x{shape[-2]} images; models need square ones")
        return int(shape[-1])

    # -- model -------------------------------------------------------------------------------------------------------
    def build_model(self, model: ModelSection, facts: Mapping[str, Any]) -> nn.Module:
        net = super().build_model(model, facts)
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def _forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last or uses_channels_last(model):
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x)

    # -- hot path ----------------------------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, batch: Mapping[str, torch.Tensor]
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self._forward(model, self.pipeline(batch["image"], train=True, epoch=self.epoch,
                                                    index=batch.get("index")))
        if self.train_loss is not None:
            loss = self.train_loss(logits, batch["label"])
        else:
            loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        return loss, {"preds": logits.detach().argmax(-1), "targets": batch["label"]}  # for the training accuracy

    def log_probs(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of a uint8 batch, averaged in probability space over the TTA views."""
        views = multi_crop_views(self.pipeline, images) if self.tta == "multi_crop" else \
            self.pipeline.views(images, self.tta)
        logits = self._forward(model, torch.cat(views) if len(views) > 1 else views[0]).float()
        if len(views) == 1:
            return logits.log_softmax(-1)
        if self.tta == "multi_crop":  # airbench averages the logits, with its weights
            weights = torch.tensor(MULTI_CROP_WEIGHTS, device=logits.device).view(-1, 1, 1)
            return (logits.view(len(views), images.shape[0], -1) * weights).sum(0).log_softmax(-1)
        probs = logits.softmax(-1).view(len(views), images.shape[0], -1).mean(0)
        return probs.clamp_min(1e-12).log()

    def evaluation_step(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        log_probs = self.log_probs(model, batch["image"])
        targets = batch["label"]
        return {"loss": F.nll_loss(log_probs, targets, reduction="none"), "preds": log_probs.argmax(-1),
                "targets": targets, "logits": log_probs}

    def create_metrics(self) -> MetricCollection:
        n = len(self.class_names)
        metrics = [MeanLoss(), Accuracy()]
        if n > self.topk:
            metrics.append(TopKAccuracy(self.topk))
        metrics.append(ConfusionMatrix(n, self.class_names))
        return MetricCollection(*metrics)

    def create_train_metrics(self) -> MetricCollection:
        """Accuracy on the (augmented) training batches, running over the epoch: beside the validation accuracy it
        shows over-fitting, and the gap augmentation and label smoothing leave."""
        return MetricCollection(Accuracy())

    def describe_metrics(self, metrics: Mapping[str, Any]) -> Iterable[str]:
        per_class = metrics.get("per_class_accuracy") or {}
        matrix = metrics.get("confusion_matrix") or []
        if not per_class:
            return []
        width = max(len(n) for n in per_class)
        lines = ["per-class accuracy:"]
        for i, (name, acc) in enumerate(per_class.items()):
            total = sum(matrix[i]) if i < len(matrix) else 0
            lines.append(f"  {name:<{width}}  {acc:.4f}  ({matrix[i][i] if total else 0}/{total})")
        if matrix and len(matrix) <= 20:
            cell = max(4, len(str(max(max(r) for r in matrix))) + 1)
            lines.append("confusion matrix (rows: true class, columns: predicted):")
            lines.append(" " * (width + 2) + "".join(f"{str(i):>{cell}}" for i in range(len(matrix))))
            for name, row in zip(per_class, matrix):
                lines.append(f"  {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
        return lines

    def prediction_header(self) -> str:
        return "id,gold,predicted,probability"

    def prediction_rows(self, data: Any, start: int, batch: Any, outputs: Mapping[str, torch.Tensor]
                        ) -> Iterator[str]:
        """One CSV row per image: its position in the evaluated split, the true and the predicted class, and the
        predicted class's probability (after TTA, as the metrics see it)."""
        probability, predicted = outputs["logits"].float().exp().max(-1)
        for i, (gold, guess, p) in enumerate(zip(outputs["targets"].tolist(), predicted.tolist(),
                                                 probability.tolist())):
            yield csv_row([start + i, self.class_names[gold], self.class_names[guess], f"{p:.6f}"])

    def label_names(self) -> dict[str, list[str]]:
        return {"class": list(self.class_names)}

    def paired_items(self, data: Any, start: int, batch: Any, outputs: Mapping[str, torch.Tensor]
                     ) -> Iterator[PairedItem]:
        """One item per image, named by its position in the evaluated split (as --write-predictions names it):
        right or wrong, for McNemar's test."""
        for i, (gold, guess) in enumerate(zip(outputs["targets"].tolist(), outputs["preds"].tolist())):
            yield PairedItem(f"image {start + i}", self.class_names[gold], self.class_names[guess], int(gold == guess),
                             1, 1)

    def explain(self, model: nn.Module, inputs: Sequence[str], *, options: ExplainOptions, device: torch.device,
                out: Path) -> Iterator[Explanation]:
        """The first convolution's filters; per image, the top-k probabilities, Grad-CAM and integrated gradients
        for the predicted class (and `--target`), and the strongest feature maps of each stage."""
        from .explain import explain_images

        return explain_images(self, model, inputs, options=options, device=device, out=out)

    def export_graph(self, model: nn.Module, facts: Mapping[str, Any], artifacts: Mapping[str, Any]) -> ExportGraph:
        """The network with its evaluation preprocessing inside, on uint8 images as decoded (see `.export`)."""
        from .export import export_graph

        if not self.class_names:  # not set up from a run's artifacts: set up as for the model zoo
            self.setup_example(facts)
        return export_graph(self, model)

    def report(self, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any],
               out: Path) -> tuple[list[Figure], list[str]]:
        """Confusion matrix and most confident mistakes on the evaluation split, per-class accuracy table."""
        from .report import write_figures

        return write_figures(self, model, recipe, artifacts, out)

    # -- inference ---------------------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, inputs: Sequence[str], *, batch_size: int,
                device: torch.device) -> Iterator[dict[str, Any]]:
        k = min(3, len(self.class_names))
        for start in range(0, len(inputs), batch_size):
            chunk = list(inputs[start:start + batch_size])
            images = load_image_files(chunk, channels=self.in_channels, size=self.source_size).to(device)
            with torch.no_grad():
                probs = self.log_probs(model, images).exp().cpu()
            top = probs.topk(k, dim=-1)
            for path, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist()):
                yield {"input": path, "class": self.class_names[indices[0]], "index": indices[0],
                       "probability": round(values[0], 6),
                       "top": [{"class": self.class_names[i], "probability": round(v, 6)}
                               for v, i in zip(values, indices)]}

    def format_prediction(self, result: Mapping[str, Any]) -> str:
        others = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in result["top"][1:])
        return f"{result['input']}: {result['class']} ({result['probability']:.1%})" + \
            (f"  [next: {others}]" if others else "")
