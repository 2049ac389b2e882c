"""The public surface for plugins, notebooks and plugin tests: everything here is a promise.

A plugin imports from this module only (the first-party vision and sequence plugins do too, and a test holds every
first-party plugin and `deepcourse new-plugin` template to it); names elsewhere in `deepcourse` may move between
releases. Grouped as:

- registries: `MODELS`, `DATASETS`, `TASKS`, `OPTIMIZERS`, `SCHEDULERS`, `TRANSFORMS`, `METRICS`, `CALLBACKS`
  (`REGISTRIES` by kind), `Registry`, `Entry`, and `load_plugins`, the one explicit discovery step;
- builders and recipes: `call_builder`, `validate_options`, `parameters`, `Unique` (items that must differ),
  `load_recipe`, `build_task`, `Recipe`, `DataSection`, `ModelSection`;
- tasks and training: `Task`, `DataBundle`, `Callback`, `TrainContext`, `TrainState`, `uses_channels_last` (whether
  the engine laid a model out channels-last: `train.channels_last`, precision "auto"), and `DataInit`: a module that
  defines `init_from_data(self, x)` (and optionally `init_samples`) is initialised from a sample of the training
  data before a new run trains (a whitening layer, LSUV);
- data: `ArrayDataset`, `resolve_splits` (the one meaning of `data.val_split` and `data.holdout`), `splits_to_read`,
  `HOLDOUT`, `holdout_indices`, `split_indices`, `subset`,
  `load_hf_splits`, `locate_splits`, `present_splits`, `candidate_dirs`, `DATA_ENV`;
- metrics: `Metric`, `MetricCollection`, `MeanLoss`, `Accuracy`, `TopKAccuracy`, `ConfusionMatrix`, `scalars`;
- errors (exit code 2 on the command line): `UserError`, `RecipeError`, `DataError`, `MissingSplitError`,
  `CheckpointError`, `RegistryError`, `UnknownNameError`, `did_you_mean`;
- reports: `evaluate_split` (what `deepcourse evaluate` computes, with a hook on every batch), `SplitEvaluation`,
  and the figure toolkit `pyplot`, `Figure`, `grouped_bars`, `heatmap`, `markdown_table`, `markdown_escape`,
  `FIGSIZE`;
- analysis: `PairedItem` (what `Task.paired_items` gives `compare --paired`), `ProbabilityEnsemble` (the default
  `Task.ensemble`: averaged class probabilities);
- explanations (`deepcourse explain`): `Explanation`, `ExplainOptions`, and the attributions on Captum `grad_cam`,
  `integrated_gradients`, `layer_integrated_gradients`, `module_outputs`, `ModuleOutput`;
- lab pieces (hand-written layers, losses and update rules; `deepcourse.lab` is the students' face): `PIECES`,
  `lab_layer`, `lab_loss`, `lab_choice` (a builder option that takes a built-in name or 'lab:NAME'), `LabLayer`,
  `PieceError`;
- export (`deepcourse export`): `ExportGraph`, what `Task.export_graph` returns;
- runs and recipes on disk: `latest_checkpoint`, `shipped_recipes` (name -> file of the recipes that ship with
  deepcourse);
- pretrained weights: `use_weights` (a model builder names a local weights file, loaded by matching names and
  shapes when a run starts, as `model.init_from` is).

The documentation and test helpers (`cli`, `zoo_section`, `count_flops`, `results_table`) live in
`deepcourse.testing`, so importing this module loads neither the command line nor the studies; reading them from here
still works for this release, with a DeprecationWarning.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepcourse.attribution import (
    ModuleOutput,
    grad_cam,
    integrated_gradients,
    layer_integrated_gradients,
    module_outputs,
)
from deepcourse.data import (
    DATA_ENV,
    ArrayDataset,
    candidate_dirs,
    holdout_indices,
    load_hf_splits,
    locate_splits,
    present_splits,
    resolve_splits,
    split_indices,
    splits_to_read,
    subset,
)
from deepcourse.discovery import load_plugins
from deepcourse.errors import CheckpointError, DataError, MissingSplitError, RecipeError, UserError, did_you_mean
from deepcourse.figures import FIGSIZE, Figure, grouped_bars, heatmap, markdown_escape, markdown_table, pyplot
from deepcourse.lab import LabLayer, PieceError, lab_layer, lab_loss
from deepcourse.lab import choice as lab_choice
from deepcourse.metrics import Accuracy, ConfusionMatrix, MeanLoss, Metric, MetricCollection, TopKAccuracy, scalars
from deepcourse.recipe.builders import Unique, call_builder, parameters, validate_options
from deepcourse.recipe.load import load_recipe as _load_recipe
from deepcourse.recipe.schema import HOLDOUT, DataSection, ModelSection, Recipe
from deepcourse.recipe.shipped import shipped as shipped_recipes
from deepcourse.registry import ALL as REGISTRIES
from deepcourse.registry import (
    CALLBACKS,
    DATASETS,
    METRICS,
    MODELS,
    OPTIMIZERS,
    PIECES,
    SCHEDULERS,
    TASKS,
    TRANSFORMS,
    Entry,
    Registry,
    RegistryError,
    UnknownNameError,
)
from deepcourse.task import (
    DataBundle,
    ExplainOptions,
    Explanation,
    ExportGraph,
    PairedItem,
    ProbabilityEnsemble,
    Task,
)
from deepcourse.training.build import build_task
from deepcourse.training.callbacks import Callback, TrainContext, TrainState
from deepcourse.training.checkpoint import latest_checkpoint
from deepcourse.training.datainit import DataInit
from deepcourse.training.evaluation import SplitEvaluation, evaluate_split
from deepcourse.training.precision import uses_channels_last
from deepcourse.training.transfer import use_weights

__all__ = [
    # registries
    "MODELS", "DATASETS", "TASKS", "OPTIMIZERS", "SCHEDULERS", "TRANSFORMS", "METRICS", "CALLBACKS", "REGISTRIES",
    "Registry", "Entry", "load_plugins",
    # builders and recipes
    "call_builder", "validate_options", "parameters", "Unique", "load_recipe", "build_task", "Recipe", "DataSection",
    "ModelSection",
    # tasks and training
    "Task", "DataBundle", "Callback", "TrainContext", "TrainState", "DataInit", "PairedItem", "ProbabilityEnsemble",
    "uses_channels_last",
    # data
    "ArrayDataset", "resolve_splits", "splits_to_read", "HOLDOUT", "holdout_indices", "split_indices", "subset",
    "load_hf_splits", "locate_splits", "present_splits", "candidate_dirs", "DATA_ENV",
    # metrics
    "Metric", "MetricCollection", "MeanLoss", "Accuracy", "TopKAccuracy", "ConfusionMatrix", "scalars",
    # errors
    "UserError", "RecipeError", "DataError", "MissingSplitError", "CheckpointError", "RegistryError",
    "UnknownNameError", "did_you_mean",
    # reports
    "evaluate_split", "SplitEvaluation", "pyplot", "Figure", "grouped_bars", "heatmap", "markdown_table",
    "markdown_escape", "FIGSIZE",
    # explanations
    "Explanation", "ExplainOptions", "ExportGraph", "grad_cam", "integrated_gradients", "layer_integrated_gradients",
    "module_outputs", "ModuleOutput",
    # lab pieces
    "PIECES", "lab_layer", "lab_loss", "lab_choice", "LabLayer", "PieceError",
    # documentation and tests
    "latest_checkpoint", "shipped_recipes",
    # pretrained weights
    "use_weights",
]

#: moved to `deepcourse.testing`; reachable here for one release
_MOVED = ("cli", "zoo_section", "count_flops", "results_table")


def load_recipe(path: str | Path | None = None, overrides: Sequence[str] = (),
                data: Mapping[str, Any] | None = None) -> Recipe:
    """Discover the installed plugins (once per process), then read, merge, override and validate a recipe: a file,
    the name of a shipped recipe, or `data` laid out as the TOML file. Raises RecipeError listing every problem."""
    load_plugins()
    return _load_recipe(path, overrides, data)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import warnings

        warnings.warn(f"deepcourse.api.{name} moved to deepcourse.testing.{name}; the old name goes in the next "
                      f"release", DeprecationWarning, stacklevel=2)
        from deepcourse import testing

        return getattr(testing, name)
    raise AttributeError(f"module 'deepcourse.api' has no attribute {name!r}")
