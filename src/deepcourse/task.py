"""The task interface: the few task-specific pieces the shared training loop needs from a plugin.

A task turns a recipe's `[data]` table into datasets and facts, builds the model from `[model]`, and turns a batch
into a loss (training) or into outputs to gather (evaluation). The engine owns everything else: devices, mixed
precision, accumulation, clipping, schedules, checkpoints, logging. Register a subclass with
`@TASKS.register("my-task")`; its `__init__` keyword arguments are the keys of the recipe's `[task]` table.

Only the `setup_*` hooks change what a task holds (vocabularies, class names, statistics fitted on the data); the
other hooks read it, and none of them changes the task's configuration from the recipe.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from deepcourse.errors import UserError
from deepcourse.figures import Figure
from deepcourse.recipe.builders import call_builder
from deepcourse.registry import MODELS

if TYPE_CHECKING:
    from deepcourse.metrics import MetricCollection
    from deepcourse.recipe.schema import DataSection, ModelSection, Recipe


#: per-sample tensors of a batch, the batch as first dimension ("preds", "targets", ...)
Outputs = dict[str, torch.Tensor]


@dataclass
class DataBundle:
    """What a task's data set-up hands the engine.

    splits: datasets by split name ("train", "validation", "test", ...). Items are whatever `collate_fn`
        accepts; with the default `collate_fn=None` the dataset is expected to return whole batches from
        `__getitems__` (see `deepcourse.data.ArrayDataset`).
    facts: values builders may ask for by parameter name (num_classes, in_channels, vocab_size, embeddings...).
        Saved with the run (tensors as safetensors) so `evaluate` and `predict` rebuild the same model.
    artifacts: JSON-serialisable state fitted on the training data (vocabularies, class names, statistics),
        saved with the run and passed back to `setup_data` when there is no training data to fit on.
    """

    splits: dict[str, Any]
    facts: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    collate_fn: Callable[[Any], Any] | None = None


class Task:
    """Base class for tasks. Subclasses implement `setup_data`, `training_step`, `evaluation_step` and
    `create_metrics`; `predict` is optional."""

    #: metric (from `create_metrics().compute()`) watched for best-model selection and early stopping; a class
    #: attribute, or a property when it depends on the data (the sequence task watches F1 or accuracy)
    monitor: str = "loss"
    monitor_mode: str = "min"
    #: value used to pad evaluation outputs of different lengths across processes before gathering
    pad_index: ClassVar[int] = -100

    #: facts of a typical dataset for this task, for the model zoo (parameters and FLOPs of each model)
    example_facts: ClassVar[dict[str, Any]] = {}
    #: what one example of `setup_example` is, in words, when the facts do not say it (FLOPs grow with it)
    example_input: ClassVar[str] = ""

    #: train.mixed_precision when neither the recipe nor the launcher sets it: "no" (float32), or "auto" (bf16 autocast
    #: and channels-last convolutions where the device computes bfloat16 natively; deepcourse.training.precision)
    default_precision: ClassVar[str] = "no"
    #: dataset name -> a shipped recipe of this task that trains on it much faster, named when a run's estimate on a
    #: CPU is over an hour (deepcourse.training.estimate)
    faster_recipes: ClassVar[dict[str, str]] = {}

    #: whether `predict` can give the n best answers per input (`deepcourse predict --nbest K`; a tagger's K best
    #: tag paths): the core refuses --nbest for a task that cannot, and otherwise sets predict_options["nbest"]
    supports_nbest: ClassVar[bool] = False

    eval_options: dict[str, Any]
    predict_options: dict[str, Any]
    #: the training epoch being run (0-based), set by the engine through `set_epoch`
    epoch: int = 0

    def __init__(self) -> None:
        self.eval_options = {}
        self.predict_options = {}

    # -- data -----------------------------------------------------------------------------------------------------
    def setup_data(self, data: DataSection, *, splits: Sequence[str], seed: int,
                   artifacts: Mapping[str, Any] | None = None) -> DataBundle:
        """Load the requested splits. `artifacts` is None when training (fit vocabularies etc. on train);
        otherwise it holds what the training run saved, and no training data may be needed."""
        raise NotImplementedError

    # -- model ----------------------------------------------------------------------------------------------------
    def build_model(self, model: ModelSection, facts: Mapping[str, Any]) -> nn.Module:
        """Default: call the registered model builder with the recipe's keys plus the facts it asks for."""
        return call_builder(MODELS.get(model.name), model.options, loc="model", provided=facts)

    # -- hot path -------------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Called by the engine before each training epoch (0-based; a resumed run's first epoch too), so augmentation
        that depends on the epoch (alternating flips: each image mirrored every other epoch) can read `self.epoch`.
        The one hook besides `setup_*` that changes what a task holds."""
        self.epoch = epoch

    def training_step(self, model: nn.Module, batch: Any) -> torch.Tensor | tuple[torch.Tensor, Outputs]:
        """The loss of one batch (already on the training device), in one of two shapes:

        - the scalar loss tensor; or
        - `(loss, outputs)`: the scalar loss and a dict of per-sample tensors (as `evaluation_step` returns them,
          the batch as first dimension, detached) for the training metrics of `create_train_metrics`.

        The engine reads the result in one place (`deepcourse.training.loop.split_step`, for training and for
        `lr-find` alike) and refuses any other shape with a TypeError."""
        raise NotImplementedError

    def evaluation_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Return tensors with the batch as first dimension; the engine gathers them across processes
        (dropping the duplicated tail samples) and passes them to the metrics' `update`."""
        raise NotImplementedError

    def create_metrics(self) -> MetricCollection:
        raise NotImplementedError

    def create_train_metrics(self) -> MetricCollection | None:
        """Metrics of the training split, updated from the outputs `training_step` returns (logged at each logging
        step and epoch, beside the training loss, so a report shows train against validation). Keep them cheap:
        accuracy, not a decoder's F1. Default: none."""
        return None

    def setup_example(self, facts: Mapping[str, Any], batch_size: int = 1) -> Any:
        """Set the task up as for a trained run with these `facts` (as `setup_data` does from saved artifacts) and
        return a batch shaped like real data, for counting a model's FLOPs; None when not supported."""
        return None

    def headline_metrics(self, monitor: str) -> list[str]:
        """The metrics a results table shows for a run (`monitor`: the one the run was selected on). Default: the
        monitored one alone; a task with several heads names each head's."""
        return [monitor]

    # -- inference ------------------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, inputs: Sequence[str], *, batch_size: int,
                device: torch.device) -> Iterator[dict[str, Any]]:
        """Yield one JSON-serialisable result per input (file path or text), streaming in batches."""
        raise NotImplementedError(f"task {type(self).__name__} does not support predict")

    def format_prediction(self, result: Mapping[str, Any]) -> str:
        """One human-readable line (or block) for a `predict` result."""
        return "  ".join(f"{k}={v}" for k, v in result.items())

    def prediction_header(self) -> str | None:
        """The first line of `deepcourse evaluate --write-predictions FILE` (a CSV header), or None for none."""
        return None

    def prediction_rows(self, data: Any, start: int, batch: Any, outputs: Outputs) -> Iterable[str]:
        """Lines of `evaluate --write-predictions` for one evaluation batch: `outputs` are what `evaluation_step`
        returned for it and `start` is the index in the split `data` of its first sample (batches come in order), so
        a row can name its sample. Images write CSV rows (id, gold, predicted, probability), taggers the token / gold
        / predicted columns conlleval reads. Default: the task cannot write predictions."""
        raise NotImplementedError

    def describe_metrics(self, metrics: Mapping[str, Any]) -> Iterable[str]:
        """Extra lines for `evaluate` output (per-class tables and the like); default none."""
        return ()

    def report(self, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any],
               out: Path) -> tuple[list[Figure], list[str]]:
        """Task figures for `deepcourse report` (confusion matrix, mistakes, per-entity scores...).

        Called with the best weights. Run the evaluation split with `deepcourse.api.evaluate_split` (the numbers
        `deepcourse evaluate` prints, its `on_batch` hook sees every batch's outputs), save PNGs into `out` with the
        figure toolkit (`pyplot`, `grouped_bars`, ...) and return `Figure`s and extra Markdown lines. Default:
        nothing."""
        return [], []

    def explain(self, model: nn.Module, inputs: Sequence[str], *, options: ExplainOptions, device: torch.device,
                out: Path) -> Iterator[Explanation]:
        """Look inside the trained model for `deepcourse explain`: yield an `Explanation` of the model itself (the
        first convolution's filters, a CRF's transitions) if there is one, then one per input (files or text, as
        `predict` reads them), with figures saved into `out` and the numbers for `--json` (with an "input" key).

        `model` is placed and cast as for evaluation, in eval mode, its parameters frozen. Attribute with
        `deepcourse.api` (`grad_cam`, `integrated_gradients`, `layer_integrated_gradients`, `module_outputs`) and
        draw with the figure toolkit; refuse an option that does not apply (a UserError naming it). Default: the task
        has no explanations, which the command says."""
        raise NotImplementedError

    def export_graph(self, model: nn.Module, facts: Mapping[str, Any], artifacts: Mapping[str, Any]) -> ExportGraph:
        """What `deepcourse export` writes for this task: a module of tensors in and out (preprocessing inside where
        it can be), example inputs, and the facts a user of the file needs (class names, vocabularies, decoding).
        Called with the best weights, the task set up from the run's artifacts (or by `setup_example`). Default:
        the model itself on `setup_example`'s batch, when that batch is one tensor; otherwise the task cannot be
        exported (UserError)."""
        batch = self.setup_example(facts, 2)
        if not isinstance(batch, torch.Tensor):
            raise UserError(f"export: task {type(self).__name__} gives no single-tensor example batch to export "
                            f"with (its plugin implements neither Task.export_graph nor such a setup_example)")
        return ExportGraph(model, {"input": batch}, ["output"], dynamic={"input": {0: "batch"}})

    def save_extra(self, folder: Path) -> None:
        """Hook to save task files beside the best weights (rarely needed: prefer artifacts)."""

    # -- analysis: ensembles, paired comparisons, breakdowns --------------------------------------------------------
    def label_names(self) -> dict[str, list[str]]:
        """The answers the model chooses among, per output (class names; a tagger's tags per label column), once set
        up: runs that differ here cannot be ensembled or compared item by item. Default: none known."""
        return {}

    def ensemble(self, members: Sequence[nn.Module]) -> nn.Module:
        """One model of several trained on the same task and data (`deepcourse ensemble`), called the way a member
        is, so evaluate, predict and report need no special case. Default: the members' class probabilities
        averaged (`ProbabilityEnsemble`), for a model that returns class scores; a task whose model returns more
        (a tagger's losses and decoded paths) combines its own way."""
        return ProbabilityEnsemble(members)

    def paired_items(self, data: Any, start: int, batch: Any, outputs: Outputs) -> Iterable[PairedItem]:
        """One `PairedItem` per sample of an evaluation batch (as `prediction_rows` reads it), for `deepcourse
        compare --paired`. Default: the task cannot pair two runs' answers."""
        raise NotImplementedError

    def breakdown(self, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any], *, split: str | None,
                  data_dir: str | Path | None) -> tuple[dict[str, Any], list[str]]:
        """Scores of a split broken down by what the task knows about its items (a tagger: entities seen or unseen
        in training, the share of their words out of the training vocabulary, their type), for `deepcourse evaluate
        --breakdown`: the numbers for --json and the lines to print. Default: the task has none."""
        raise NotImplementedError


@dataclass(frozen=True)
class PairedItem:
    """One evaluated sample as `compare --paired` reads it: what names it in the table of flips (an image's index,
    a sentence), the gold and the predicted answer in words, and the counts its score sums: `hits` right out of
    `predicted` answers and `gold` ones. A classifier's item is (1 or 0, 1, 1), scored by McNemar's test; a
    tagger's sentence is (spans right, spans predicted, gold spans), scored as F1 = 2 hits / (predicted + gold)
    by a paired bootstrap."""

    item: str
    gold: str
    predicted: str
    hits: int
    predicted_count: int
    gold_count: int


class ProbabilityEnsemble(nn.Module):
    """Members that return class scores (logits), as one model returning the log of their mean probabilities:
    softmax of it is the mean probability, argmax the class the members favour on average, cross-entropy the loss
    of the mean. Averaging probabilities rather than logits keeps a member that is sure and wrong from outvoting
    the others by the size of its scores."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        log_probs = torch.stack([m(*args, **kwargs).float().log_softmax(-1) for m in self.members])
        return torch.logsumexp(log_probs, 0) - math.log(len(self.members))  # log mean exp: exact for equal members


@dataclass
class ExportGraph:
    """What a task hands `deepcourse export`: `module(*inputs.values())` returns the tensors named `outputs` (one
    tensor, or a tuple in that order). `dynamic` names the axes that vary ({"image": {0: "batch"}}); `check`, inputs
    of other sizes along those axes that the written file is run on and compared with `module` (default: `inputs`);
    `facts`, JSON-serialisable preprocessing and decoding facts written beside the file."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    check: dict[str, torch.Tensor] | None = None
    facts: dict[str, Any] = field(default_factory=dict)


# -- explanations ---------------------------------------------------------------------------------------------------
# What `deepcourse explain` hands a task and what the task hands back: the command line's options and one
# explanation (title, figures, Markdown notes, numbers). Kept apart from `deepcourse.results.explain`, which loads
# runs, so that `deepcourse.task` can name these types without importing the run machinery (and closing an import
# circle).
@dataclass(frozen=True)
class ExplainOptions:
    """The command line's choices; None means the task's default, and a task refuses (UserError) an option that does
    not apply to it, naming it (`--layer` for a tagger, `--nbest` for a CNN).

    target: also explain this answer besides the predicted one (a class of a CNN; an entity type or the words of an
    entity of a tagger). topk: probabilities shown. nbest: best tag paths listed. layer: the module whose maps
    Grad-CAM weighs. channels: feature-map channels shown per stage. steps: integrated-gradient steps."""

    target: str | None = None
    topk: int | None = None
    nbest: int | None = None
    layer: str | None = None
    channels: int | None = None
    steps: int = 32


@dataclass
class Explanation:
    """What a task shows for one input, or for the model as a whole (its first convolution's filters, a CRF's
    transitions): a section title, saved figures, extra Markdown lines (tables), and JSON-serialisable numbers for
    `--json` (include "input" for an input's)."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
