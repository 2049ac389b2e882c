"""The recipe schema: every core key with its type, range, default and meaning, in one place.

Each key's `description` is what `docs/recipe-reference.md` prints (`python -m deepcourse.docgen`), so the reference
cannot drift from the code. Tables whose other keys belong to a registered builder (`[model]`, `[data]`, ...) allow
extra keys; `deepcourse.recipe` checks them against the builder's signature.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field

from .builders import parameters
from .registry import ALL

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


def doc(default: Any, description: str) -> Any:
    """A field's default and the sentence the recipe reference shows for it."""
    return Field(default, description=description)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    """A table whose extra keys belong to a registered builder, checked against its signature."""
    model_config = ConfigDict(extra="allow", strict=True)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TaskSection(_Open):
    name: str = doc(..., "registered task")


class DataSection(_Open):
    name: str = doc(..., "registered dataset")
    data_dir: str | None = doc(None, "folder with a local copy; it must exist (without the key: $DEEPCOURSE_DATA/"
                                      "<dataset>/, else the Hub)")
    batch_size: PositiveInt = doc(32, "samples per batch and process")
    eval_batch_size: PositiveInt | None = doc(None, "batch size for evaluation (default: batch_size)")
    val_split: Annotated[float, Field(ge=0, lt=1)] | None = doc(
        None, "fraction of train carved off as the validation split, only when the dataset has none of its own (the "
              "same samples for the same seed); a dataset's own validation split is always used as it is")
    num_workers: NonNegInt = doc(0, "DataLoader worker processes (0: load in the training process)")
    train_samples: PositiveInt | None = doc(
        None, "train on a random subset of this many samples (the same for the same seed): quick ablations")
    eval_samples: PositiveInt | None = doc(
        None, "evaluate on a random subset of this many samples (the same for the same seed), in training and in "
              "`deepcourse evaluate`")
    group_by_length: bool = doc(
        False, "batch sentences of similar length together (less padding, faster epochs on variable-length data); "
               "batches stay random in content and order")


class ModelSection(_Open):
    name: str = doc(..., "registered model")


class OptimizerSection(_Open):
    name: str = doc("adamw", "registered optimizer")


class SchedulerSection(_Open):
    name: str = doc("constant", "registered learning-rate schedule (stepped per optimizer step; plateau per "
                                "evaluation)")


class EarlyStopping(_Strict):
    patience: PositiveInt = doc(..., "evaluations without improvement before stopping")
    min_delta: NonNegFloat = doc(0.0, "smallest change that counts as an improvement")


class TrainSection(_Strict):
    epochs: PositiveInt = doc(10, "passes over the training data")
    max_steps: PositiveInt | None = doc(None, "stop after this many optimizer steps (smoke runs), evaluating at the "
                                              "end")
    mixed_precision: Literal["no", "bf16", "fp16"] = doc(
        "no", "no, bf16 (CPU or recent GPUs) or fp16 (GPU, with a gradient scaler)")
    grad_accum: PositiveInt = doc(1, "batches per optimizer step")
    clip_grad_norm: PositiveFloat | None = doc(None, "clip the global gradient norm to this value")
    l1: NonNegFloat = doc(0.0, "L1 penalty on weight matrices and kernels, added to the loss (weight decay is L2)")
    monitor: str | None = doc(None, "validation metric that picks the best epoch and drives early stopping "
                                    "(default: the task's)")
    monitor_mode: Literal["min", "max"] | None = doc(None, "min or max (default: the task's)")
    early_stopping: EarlyStopping | None = doc(
        None, "{patience = N, min_delta = 0.0}: stop after N evaluations without improvement")
    checkpoint_every: NonNegInt = doc(0, "also checkpoint every N optimizer steps (0: at the end of each epoch only)")
    keep_checkpoints: PositiveInt = doc(2, "how many checkpoints to keep")
    log_every: PositiveInt = doc(50, "log the training loss every N optimizer steps")
    deterministic: bool = doc(False, "ask torch for deterministic algorithms (slower)")
    skip_nonfinite: bool = doc(False, "skip steps whose loss is NaN/inf instead of stopping")
    trackers: list[Literal["tensorboard"]] = doc([], "extra loggers besides metrics.jsonl: tensorboard")
    progress: bool = doc(True, "progress bars on a terminal")
    device: Literal["auto", "cpu"] = doc("auto", "auto (GPU when there is one) or cpu")
    threads: PositiveInt | None = doc(None, "torch CPU threads per process (the caller's setting is restored "
                                            "after the run)")
    keep_freed_memory: bool = doc(
        True, "on Linux (glibc), keep freed memory for reuse instead of page-faulting it back every step (see "
              "deepcourse.allocator); false restores glibc's defaults")
    callbacks: list[dict[str, Any]] = doc([], "[{name = ..., ...}]: registered callbacks with their keys")


class EvalSection(_Open):
    split: str = doc("validation", "split evaluated each epoch and used to pick the best model")
    every: PositiveInt = doc(1, "evaluate every N epochs (and always after the last)")
    batch_size: PositiveInt | None = doc(None, "batch size for evaluation")


class SweepSection(_Strict):
    """What `deepcourse sweep RECIPE` varies when no --grid is given: an ablation kept with its recipe."""
    grid: dict[str, list[Any]] = doc({}, "what `deepcourse sweep` varies: {\"key.path\" = [values]}, the runs are the "
                                         "product")
    seeds: PositiveInt = doc(1, "runs per grid point (seed, seed+1, ...), reported as mean and spread")


class Recipe(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = doc(
        ..., "run name: runs go to runs/<name>/<timestamp>/ (default: the file name)")
    description: str = doc("", "free text, shown in reports")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = doc(
        0, "seeds Python, NumPy and torch, the data order and the validation split (NumPy takes at most 2**32 - 1)")
    extends: str | None = doc(None, "path of a base recipe (relative to this file): tables merge, lists replace")
    requires_plugins: list[str] = doc([], "plugins the recipe needs; a clear message names any that are missing")
    task: TaskSection
    data: DataSection
    model: ModelSection
    optimizer: OptimizerSection = OptimizerSection()
    scheduler: SchedulerSection = SchedulerSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    sweep: SweepSection = SweepSection()

    source: Path | None = Field(default=None, exclude=True)

    @property
    def eval_batch_size(self) -> int:
        """Samples per evaluation batch: eval.batch_size, else data.eval_batch_size, else data.batch_size. One
        place, so training, `evaluate` and the tasks' reports batch the evaluation split alike."""
        return self.eval.batch_size or self.data.eval_batch_size or self.data.batch_size

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe: every key with its value, builder defaults included."""
        data = self.model_dump(mode="json", exclude_none=True, exclude={"source", "extends"})
        for section in BUILDER_SECTIONS:
            if section == "model":
                continue  # a model default may be a fact the data provides: written out, it would override it
            fn = _builder_for(section, getattr(self, section).name)
            if fn is None:
                continue
            defaults = {k: d for k, (_, d) in parameters(fn).items()
                        if d is not inspect.Parameter.empty and d is not None and k not in data[section]
                        and _plain(d) and k not in CONTEXT_KEYS.get(section, ())}
            merged = {**defaults, **{k: v for k, v in data[section].items() if k != "name"}}
            data[section] = {"name": data[section]["name"], **dict(sorted(merged.items()))}
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(_toml_safe(self.to_dict()))


#: Each table by its key path, in the order the reference documents them ("" is the top level).
SECTION_MODELS: dict[str, type[BaseModel]] = {
    "": Recipe, "task": TaskSection, "data": DataSection, "model": ModelSection, "optimizer": OptimizerSection,
    "scheduler": SchedulerSection, "train": TrainSection, "train.early_stopping": EarlyStopping, "eval": EvalSection,
    "sweep": SweepSection,
}
#: Tables whose `name` picks a builder from a registry, and that registry.
BUILDER_SECTIONS = {"task": "tasks", "data": "datasets", "model": "models", "optimizer": "optimizers",
                    "scheduler": "schedulers"}
#: Where a recipe names each registry's components (None: only inside another component's table).
REGISTRY_PLACES: dict[str, str | None] = {
    **{kind: section for section, kind in BUILDER_SECTIONS.items()}, "transforms": None,
    "callbacks": "train.callbacks", "metrics": None}
#: Parameters a builder receives from the engine or its task, never from the recipe table.
CONTEXT_KEYS = {"optimizer": ("params",),
                "scheduler": ("optimizer", "total_steps", "steps_per_epoch", "epochs", "monitor_mode"),
                "data": ("data_dir", "seed", "splits", "val_split")}
#: Recipe keys (prefixes) that change how visibly or how often a run saves, not what it computes: a resumed run may
#: change them, and `compare` does not label runs by them. (Not epochs: schedules such as one-cycle are laid out
#: over the original length.)
NON_COMPUTING_KEYS = ("train.progress", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                      "train.threads", "train.keep_freed_memory", "train.trackers", "train.callbacks", "sweep")


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, tuple, list, dict))


def _toml_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_safe(v) for v in value]
    return value


def _builder_for(section: str, name: str) -> Any:
    registry = ALL[BUILDER_SECTIONS[section]]
    return registry.get(name) if name in registry else None
