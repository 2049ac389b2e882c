"""The public surface for plugins, notebooks and plugin tests: everything here is a promise.

A plugin imports from this module only (the first-party vision and sequence plugins do too, and a test holds every
first-party plugin and `deepcourse new-plugin` template to it); names elsewhere in `deepcourse` may move between
releases. Grouped as:

- registries: `MODELS`, `DATASETS`, `TASKS`, `OPTIMIZERS`, `SCHEDULERS`, `TRANSFORMS`, `METRICS`, `CALLBACKS`
  (`REGISTRIES` by kind), `Registry`, `Entry`, and `load_plugins`, the one explicit discovery step;
- builders and recipes: `call_builder`, `validate_options`, `parameters`, `Unique` (items that must differ),
  `load_recipe`, `build_task`, `Recipe`, `DataSection`, `ModelSection`;
- tasks and training: `Task`, `DataBundle`, `Callback`, `TrainContext`, `TrainState`;
- data: `ArrayDataset`, `resolve_splits` (the one meaning of `data.val_split` and `data.holdout`), `splits_to_read`,
  `HOLDOUT`, `holdout_indices`, `split_indices`, `subset`,
  `load_hf_splits`, `locate_splits`, `present_splits`, `candidate_dirs`, `DATA_ENV`;
- metrics: `Metric`, `MetricCollection`, `MeanLoss`, `Accuracy`, `TopKAccuracy`, `ConfusionMatrix`, `scalars`;
- errors (exit code 2 on the command line): `UserError`, `RecipeError`, `DataError`, `MissingSplitError`,
  `CheckpointError`, `RegistryError`, `UnknownNameError`, `did_you_mean`;
- reports: `evaluate_split` (what `deepcourse evaluate` computes, with a hook on every batch), `SplitEvaluation`,
  and the figure toolkit `pyplot`, `Figure`, `grouped_bars`, `heatmap`, `markdown_table`, `markdown_escape`,
  `FIGSIZE`;
- explanations (`deepcourse explain`): `Explanation`, `ExplainOptions`, and the attributions on Captum `grad_cam`,
  `integrated_gradients`, `layer_integrated_gradients`, `module_outputs`, `ModuleOutput`;
- documentation and tests: `zoo_section`, `count_flops`, `results_table`, `latest_checkpoint`, `shipped_recipes`
  (name -> file of the recipes that ship with deepcourse), and `cli`, the command line as a click command (for
  `click.testing.CliRunner`).
"""
from __future__ import annotations

from .builders import Unique, call_builder, parameters, validate_options
from .catalog import shipped as shipped_recipes
from .callbacks import Callback, TrainContext, TrainState
from .checkpoint import latest_checkpoint
from .cli import main as cli
from .components import build_task
from .data import (DATA_ENV, ArrayDataset, candidate_dirs, holdout_indices, load_hf_splits, locate_splits,
                   present_splits, resolve_splits, split_indices, splits_to_read, subset)
from .docgen import count_flops, zoo_section
from .docgen import results as results_table
from .errors import CheckpointError, DataError, MissingSplitError, RecipeError, UserError, did_you_mean
from .attribution import (ModuleOutput, grad_cam, integrated_gradients, layer_integrated_gradients,
                          module_outputs)
from .evaluation import SplitEvaluation, evaluate_split
from .explanation import Explanation, ExplainOptions
from .figures import FIGSIZE, Figure, grouped_bars, heatmap, markdown_escape, markdown_table, pyplot
from .metrics import Accuracy, ConfusionMatrix, MeanLoss, Metric, MetricCollection, TopKAccuracy, scalars
from .plugins import load_plugins
from .recipe import load_recipe
from .registry import ALL as REGISTRIES
from .registry import (CALLBACKS, DATASETS, METRICS, MODELS, OPTIMIZERS, SCHEDULERS, TASKS, TRANSFORMS, Entry,
                       Registry, RegistryError, UnknownNameError)
from .schema import HOLDOUT, DataSection, ModelSection, Recipe
from .task import DataBundle, Task

__all__ = [
    # registries
    "MODELS", "DATASETS", "TASKS", "OPTIMIZERS", "SCHEDULERS", "TRANSFORMS", "METRICS", "CALLBACKS", "REGISTRIES",
    "Registry", "Entry", "load_plugins",
    # builders and recipes
    "call_builder", "validate_options", "parameters", "Unique", "load_recipe", "build_task", "Recipe", "DataSection",
    "ModelSection",
    # tasks and training
    "Task", "DataBundle", "Callback", "TrainContext", "TrainState",
    # data
    "ArrayDataset", "resolve_splits", "splits_to_read", "HOLDOUT", "holdout_indices", "split_indices", "subset", "load_hf_splits", "locate_splits", "present_splits",
    "candidate_dirs", "DATA_ENV",
    # metrics
    "Metric", "MetricCollection", "MeanLoss", "Accuracy", "TopKAccuracy", "ConfusionMatrix", "scalars",
    # errors
    "UserError", "RecipeError", "DataError", "MissingSplitError", "CheckpointError", "RegistryError",
    "UnknownNameError", "did_you_mean",
    # reports
    "evaluate_split", "SplitEvaluation", "pyplot", "Figure", "grouped_bars", "heatmap", "markdown_table",
    "markdown_escape", "FIGSIZE",
    # explanations
    "Explanation", "ExplainOptions", "grad_cam", "integrated_gradients", "layer_integrated_gradients",
    "module_outputs", "ModuleOutput",
    # documentation and tests
    "zoo_section", "count_flops", "results_table", "latest_checkpoint", "shipped_recipes", "cli",
]
