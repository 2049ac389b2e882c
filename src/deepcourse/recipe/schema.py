"""The recipe schema: every core key with its type, range, default and meaning, in one place.

Each key's `description` is what `docs/recipe-reference.md` prints (`python -m deepcourse.cli.docgen`), so the reference
cannot drift from the code. Tables whose other keys belong to a registered builder (`[model]`, `[data]`, ...) allow
extra keys; `deepcourse.recipe.load` checks them against the builder's signature.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, Field, PlainValidator, WithJsonSchema, field_validator

from deepcourse.recipe.builders import parameters
from deepcourse.recipe.fields import NonNegFloat, NonNegInt, Open, PositiveFloat, PositiveInt, Strict, doc
from deepcourse.recipe.techniques import FreezeRule, ParamGroup, WeightAveraging
from deepcourse.registry import ALL

#: the split `data.holdout` carves from train: scored once at the end of a run, never trained or selected on
HOLDOUT = "holdout"

class TaskSection(Open):
    name: str = doc(..., "registered task")


class DataSection(Open):
    name: str = doc(..., "registered dataset")
    data_dir: str | None = doc(None, "folder with a local copy; it must exist (without the key: $DEEPCOURSE_DATA/"
                                      "<dataset>/, else the Hub)")
    batch_size: PositiveInt = doc(32, "samples per batch and process")
    eval_batch_size: PositiveInt | None = doc(None, "batch size for evaluation (default: batch_size)")
    drop_last: bool = doc(False, "leave out each epoch's last, smaller training batch: every step then has the same "
                                 "shape, so a compiled model (train.compile) is compiled once, not again for the short "
                                 "batch; the samples left out differ from epoch to epoch")
    val_split: Annotated[float, Field(ge=0, lt=1)] | None = doc(
        None, "fraction of train carved off as the validation split, only when the dataset has none of its own (the "
              "same samples for the same seed); a dataset's own validation split is always used as it is")
    holdout: Annotated[float, Field(ge=0, lt=1)] | None = doc(
        None, "fraction of train kept out as split 'holdout', the same samples for every seed and recipe (the last "
              "whole documents where the dataset marks them, else a fixed random draw), never trained on and never "
              "selected on; the best weights are scored on it once, at the end of the run (RUN/holdout.json): an "
              "estimate of performance on unseen data when the test split is kept out. 0 turns it off (--set "
              "data.holdout=0 trains the final model on all of train)")
    split_seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = doc(
        None, "seed of the data's random choices: the validation split carved by val_split and the train_samples / "
              "eval_samples subsets (default: the run's seed). Runs with different seeds that must see the same "
              "validation samples, such as the members of an ensemble, give the same split_seed")
    num_workers: NonNegInt = doc(0, "DataLoader worker processes (0: load in the training process)")
    train_samples: PositiveInt | None = doc(
        None, "train on a random subset of this many samples (the same for the same seed): quick ablations")
    eval_samples: PositiveInt | None = doc(
        None, "evaluate on a random subset of this many samples (the same for the same seed), in training and in "
              "`deepcourse evaluate`")
    group_by_length: bool = doc(
        False, "batch sentences of similar length together (less padding, faster epochs on variable-length data); "
               "batches stay random in content and order")
    on_device: bool = doc(
        False, "keep the decoded dataset on the training device (a GPU), so a step moves no data from the host: for "
               "data held as tensors (ArrayDataset) that fits beside the model, such as MNIST or CIFAR-10 (150 MB). "
               "One training process cuts its batches there from an order copied once per epoch; several "
               "processes still send each batch's indices from the host")


class ModelSection(Open):
    name: str = doc(..., "registered model")
    init_from: str | None = doc(
        None, "start from earlier weights: a run folder (its best/ weights; a recipe's runs folder: its newest run "
              "with best weights), a .safetensors file or a torch .pth/.pt state dict. Tensors of the same name and "
              "shape are loaded after the model is built; the run's first lines say what matched and what was "
              "skipped (missing in the source, another shape: e.g. a new classifier head)")


class OptimizerSection(Open):
    name: str = doc("adamw", "registered optimizer, or `lab:NAME` for a hand-written update rule (docs/labs.md)")
    groups: list[ParamGroup] | None = doc(
        None, "[[optimizer.groups]] tables {match = ..., lr_scale = ..., weight_decay_scale = ...}: parameter groups "
              "with their own rate and decay. A parameter goes in the first group whose pattern matches it; the "
              "others form the default group (optimizer.lr, optimizer.weight_decay). A pattern that matches no "
              "parameter is an error")


class SchedulerSection(Open):
    name: str = doc("constant", "registered learning-rate schedule (stepped per optimizer step; plateau per "
                                "evaluation)")


#: torch.compile backends, as Accelerate names them (accelerate.utils.DynamoBackend, less "no"); a test keeps the
#: two lists equal
CompileBackend = Literal["eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser", "cudagraphs", "ofi",
                         "fx2trt", "onnxrt", "tensorrt", "aot_torchxla_trace_once", "torchxla_trace_once", "tvm",
                         "hpu_backend", "neuron"]
#: experiment trackers Accelerate logs to (accelerate.utils.LoggerType, less "all"); a test keeps them equal
Tracker = Literal["aim", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "swanlab"]


class CompileOptions(Strict):
    backend: CompileBackend = doc("inductor", "torch.compile backend (eager and aot_eager only trace: quick to check "
                                              "that a model compiles)")
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = doc(
        None, "torch.compile mode (default: torch's)")
    fullgraph: bool = doc(False, "fail instead of splitting the model into several graphs")
    dynamic: bool | None = doc(None, "trace with dynamic shapes (default: torch decides)")


class EarlyStopping(Strict):
    patience: PositiveInt = doc(..., "evaluations without improvement before stopping")
    min_delta: NonNegFloat = doc(0.0, "smallest change that counts as an improvement")


class TrainSection(Strict):
    epochs: PositiveInt = doc(10, "passes over the training data")
    max_steps: PositiveInt | None = doc(
        None, "stop after this many optimizer steps (smoke runs). A run it cuts short evaluates once, at the end "
              "(unless eval.every is given), and unless data.eval_samples is set evaluates at most as many samples "
              "as it trained on (max_steps x batch_size x grad_accum), so a smoke run is not spent evaluating; a "
              "line says so")
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] | None = doc(
        None, "no (float32), bf16 (CPU or recent GPUs), fp16 (CUDA GPUs, with a gradient scaler), or auto: bf16 "
              "autocast where the device computes bfloat16 fast (CPUs with AMX or ARM BF16; CPUs with AVX-512 BF16 "
              "where a short measurement, cached per machine, finds it at least 1.15x faster than float32; CUDA GPUs "
              "that support it), else no; and channels-last convolutions on CPUs and with bf16. Unset: what the "
              "launcher says (`accelerate launch --mixed_precision`, or its config file), else the task's default "
              "(auto for image classification, no elsewhere). A value here wins over the launcher's, with a warning "
              "when they differ. The run's first lines and run.json say what was chosen")
    channels_last: bool | None = doc(
        None, "convert the model to the channels-last (NHWC) memory format, faster for convolutions in bf16; unset: "
              "on exactly when mixed_precision auto chose bf16 and the model has a Conv2d. Evaluation, `evaluate` "
              "and `predict` use the same format")
    estimate: bool | None = doc(
        None, "before training, time a few real steps and one evaluation batch and print the run's length (\"about "
              "N min on this machine\"), also in run.json; the probe leaves weights, optimizer and random state as "
              "they were. Unset: for new runs of more than 200 optimizer steps (the probe then costs at most a few "
              "percent), not for the runs of a sweep or search; `deepcourse check --estimate` prints it without "
              "training")
    grad_accum: PositiveInt | None = doc(
        None, "batches per optimizer step; unset: Accelerate's ACCELERATE_GRADIENT_ACCUMULATION_STEPS, else 1. A "
              "value here wins, with a warning when they differ")
    compile: bool | CompileOptions | None = doc(
        None, "torch.compile the model: true (inductor) or {backend = ..., mode = ...}; unset: what the launcher says "
              "(`accelerate launch --dynamo_backend`), else off. Weights are always saved uncompiled")
    clip_grad_norm: PositiveFloat | None = doc(None, "clip the global gradient norm to this value")
    l1: NonNegFloat = doc(0.0, "L1 penalty on weight matrices and kernels, added to the loss (weight decay is L2)")
    monitor: str | None = doc(None, "validation metric that picks the best epoch and drives early stopping "
                                    "(default: the task's)")
    monitor_mode: Literal["min", "max"] | None = doc(None, "min or max (default: the task's)")
    early_stopping: EarlyStopping | None = doc(
        None, "{patience = N, min_delta = 0.0}: stop after N evaluations without improvement")
    checkpoint_every: NonNegInt = doc(0, "also checkpoint every N optimizer steps (0: at the end of each epoch only)")
    checkpoint_epochs: NonNegInt = doc(
        1, "checkpoint at the end of every N epochs (0: of none but the last); the end of training and a stop "
           "always checkpoint. Raise it where a checkpoint costs much of an epoch (a large model on a fast GPU)")
    checkpoint_minutes: Annotated[float, Field(gt=0)] | None = doc(
        None, "also checkpoint when this many minutes have passed since the last checkpoint (looked at after each "
              "step; with several processes every train.stop_check_every steps, agreed by all)")
    keep_checkpoints: PositiveInt = doc(2, "how many checkpoints to keep")
    log_every: PositiveInt = doc(50, "log the training loss every N optimizer steps")
    deterministic: bool = doc(False, "ask torch for deterministic algorithms (slower)")
    skip_nonfinite: bool = doc(False, "skip steps whose loss is NaN/inf instead of stopping")
    trackers: list[Tracker] = doc(
        [], "experiment trackers besides metrics.jsonl, through Accelerate: tensorboard, mlflow, wandb, aim, comet_ml, "
            "clearml, dvclive, trackio, swanlab (each needs its package); the recipe is logged as hyperparameters")
    progress: bool = doc(True, "progress bars on a terminal and in a Jupyter notebook; none where the output is "
                               "neither (a CI log, a file) unless DEEPCOURSE_PROGRESS=1")
    device: Literal["auto", "cpu"] = doc("auto", "auto (GPU when there is one) or cpu")
    threads: PositiveInt | None = doc(None, "torch CPU threads per process (the caller's setting is restored "
                                            "after the run)")
    stop_check_every: PositiveInt = doc(
        10, "with several processes, agree on a Ctrl-C or SIGTERM every N optimizer steps (and evaluation batches): "
            "one small all-reduce per N steps instead of a host sync on every step")
    tf32: bool | None = doc(None, "TF32 matrix products and convolutions on NVIDIA GPUs (Ampere and newer): faster "
                                  "float32 with a 10-bit mantissa; unset: torch's defaults")
    cudnn_benchmark: bool = doc(False, "let cuDNN time its convolution algorithms for each input shape and keep the "
                                       "fastest (fixed image sizes; not deterministic)")
    keep_freed_memory: bool = doc(
        True, "on Linux (glibc), keep freed memory for reuse instead of page-faulting it back every step (see "
              "deepcourse.training.accelerator); false restores glibc's defaults")
    callbacks: list[dict[str, Any]] = doc([], "[{name = ..., ...}]: registered callbacks with their keys")
    average: WeightAveraging | None = doc(
        None, "{method = \"ema\", \"lookahead\" or \"swa\", ...}: average the weights while training; evaluation and "
              "best/ use the average (see [train.average])")

    freeze: list[FreezeRule] | None = doc(
        None, "parameters that do not train, by pattern (as optimizer.groups' match): [\"conv1\", \"layer1\"] for "
              "the whole run (left out of the optimizer), or {match = ..., from_epoch = N} / {match = ..., "
              "until_epoch = N} for part of it. The run's first lines say how many were frozen; freezing every "
              "parameter is an error")

    @field_validator("freeze", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        """A plain pattern is the rule {match = pattern}: frozen for the whole run."""
        return [{"match": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


def _every(value: Any) -> Any:
    """eval.every: a whole number of epochs or "end", in one message (a union would name each member)."""
    if value == "end" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError('a whole number of epochs (> 0) or "end"')


# written out: a plain validator has no schema of its own (pydantic 2.6 refuses to render one, later versions say Any)
_EVERY_SCHEMA = {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"const": "end", "type": "string"}]}


class EvalSection(Open):
    split: str = doc("validation", "split evaluated each epoch and used to pick the best model (never 'holdout', which "
                                   "only estimates how the chosen model does on unseen data)")
    every: Annotated[PositiveInt | Literal["end"], PlainValidator(_every), WithJsonSchema(_EVERY_SCHEMA)] = doc(
        1, "evaluate every N epochs (and always after the last), or \"end\": only after the last epoch (speed "
           "recipes: the best weights are then the last)")
    batch_size: PositiveInt | None = doc(None, "batch size for evaluation")


class SweepSection(Strict):
    """What `deepcourse sweep RECIPE` varies when no --grid is given: an ablation kept with its recipe."""
    grid: dict[str, list[Any]] = doc({}, "what `deepcourse sweep` varies: {\"key.path\" = [values]}, the runs are the "
                                         "product")
    seeds: PositiveInt = doc(1, "runs per grid point (seed, seed+1, ...), reported as mean and spread")


class SearchSection(Strict):
    """What `deepcourse tune RECIPE` searches: the space, the budget, Optuna's sampler and pruner."""
    trials: PositiveInt = doc(20, "trials to finish (completed or pruned), counted over every worker of the study")
    sampler: Literal["tpe", "random", "grid", "cmaes", "qmc"] = doc(
        "tpe", "Optuna's sampler: tpe (Bayesian, the default), random, grid (every point of the space, in order), "
               "cmaes (continuous spaces), qmc (quasi-random)")
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = doc(
        "median", "stops unpromising trials early, from their per-epoch evaluations of the monitored metric")
    seeds: PositiveInt = doc(1, "runs of the best configuration at the end, with seeds seed, seed+1, ...: reported "
                                "as mean ± std and a 95% confidence interval")
    space: dict[str, Any] = doc(
        {}, "what each trial samples, keys as in --set: {\"optimizer.lr\" = {low = 1e-4, high = 0.1, log = true}, "
            "\"model.hidden\" = {low = 16, high = 128, step = 16}, \"optimizer\" = [{name = \"sgd\"}, ...]}")


class Recipe(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = doc(
        ..., "run name: runs go to runs/<name>/<timestamp>/ (default: the file name)")
    description: str = doc("", "free text, shown in reports")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = doc(
        0, "seeds Python, NumPy and torch, the data order and (unless data.split_seed is given) the validation "
           "split (NumPy takes at most 2**32 - 1)")
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
    search: SearchSection = SearchSection()

    source: Path | None = Field(default=None, exclude=True)

    @property
    def eval_batch_size(self) -> int:
        """Samples per evaluation batch: eval.batch_size, else data.eval_batch_size, else data.batch_size. One
        place, so training, `evaluate` and the tasks' reports batch the evaluation split alike."""
        return self.eval.batch_size or self.data.eval_batch_size or self.data.batch_size

    @property
    def eval_samples(self) -> int | None:
        """At most this many samples of the evaluation split (None: all): data.eval_samples, else, for a run that
        train.max_steps cuts (a smoke run), as many as it trains on. One place, so training, the report and
        `deepcourse evaluate` of the run evaluate alike."""
        if self.data.eval_samples or not self.train.max_steps:
            return self.data.eval_samples
        return self.train.max_steps * self.data.batch_size * (self.train.grad_accum or 1)

    @property
    def data_seed(self) -> int:
        """The seed of the data's random choices (the validation split, the train / eval subsets):
        data.split_seed, else the run's seed. One place, so training, evaluation and every command that sets up
        a run's data again choose the same samples."""
        return self.seed if self.data.split_seed is None else self.data.split_seed

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
    "scheduler": SchedulerSection, "train": TrainSection, "train.compile": CompileOptions,
    "train.early_stopping": EarlyStopping, "train.average": WeightAveraging, "optimizer.groups": ParamGroup,
    "train.freeze": FreezeRule,
    "eval": EvalSection, "sweep": SweepSection, "search": SearchSection,
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
                "data": ("data_dir", "seed", "splits", "val_split", "holdout")}
#: Recipe keys (prefixes) that change how visibly or how often a run saves, not what it computes: a resumed run may
#: change them, and `compare` does not label runs by them. (Not epochs: schedules such as one-cycle are laid out
#: over the original length.)
NON_COMPUTING_KEYS = ("train.progress", "train.log_every", "train.checkpoint_every", "train.checkpoint_epochs",
                      "train.checkpoint_minutes", "train.keep_checkpoints",
                      "train.threads", "train.keep_freed_memory", "train.trackers", "train.callbacks",
                      "train.stop_check_every", "train.estimate", "data.on_device", "sweep", "search")


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
