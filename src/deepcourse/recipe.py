"""Recipes: TOML files that bind a dataset to a model, validated before anything is loaded.

Loading goes: read TOML -> follow `extends` (tables deep-merge, lists replace) -> apply `--set` overrides -> check
the core keys with pydantic -> check each plugin table against its builder's signature. Every problem is collected
and reported at once with its key path, so a user fixes a recipe in one pass instead of one error per run.
"""
from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .builders import _format_errors, parameters, validate_options
from .errors import RecipeError, UserError, did_you_mean

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    """A table whose extra keys belong to a registered builder, checked against its signature."""
    model_config = ConfigDict(extra="allow", strict=True)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TaskSection(_Open):
    name: str


class DataSection(_Open):
    name: str
    data_dir: str | None = None
    batch_size: PositiveInt = 32
    eval_batch_size: PositiveInt | None = None
    val_split: Annotated[float, Field(ge=0, lt=1)] | None = None
    num_workers: NonNegInt = 0
    train_samples: PositiveInt | None = None
    eval_samples: PositiveInt | None = None
    group_by_length: bool = False


class ModelSection(_Open):
    name: str


class OptimizerSection(_Open):
    name: str = "adamw"


class SchedulerSection(_Open):
    name: str = "constant"


class EarlyStopping(_Strict):
    patience: PositiveInt
    min_delta: NonNegFloat = 0.0


class TrainSection(_Strict):
    epochs: PositiveInt = 10
    max_steps: PositiveInt | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    grad_accum: PositiveInt = 1
    clip_grad_norm: PositiveFloat | None = None
    l1: NonNegFloat = 0.0
    monitor: str | None = None
    monitor_mode: Literal["min", "max"] | None = None
    early_stopping: EarlyStopping | None = None
    checkpoint_every: NonNegInt = 0
    keep_checkpoints: PositiveInt = 2
    log_every: PositiveInt = 50
    deterministic: bool = False
    skip_nonfinite: bool = False
    trackers: list[Literal["tensorboard"]] = []
    progress: bool = True
    device: Literal["auto", "cpu"] = "auto"
    threads: PositiveInt | None = None
    keep_freed_memory: bool = True
    callbacks: list[dict[str, Any]] = []


class EvalSection(_Open):
    split: str = "validation"
    every: PositiveInt = 1
    batch_size: PositiveInt | None = None


class SweepSection(_Strict):
    """What `deepcourse sweep RECIPE` varies when no --grid is given: an ablation kept with its recipe."""
    grid: dict[str, list[Any]] = {}
    seeds: PositiveInt = 1


class Recipe(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: str = ""
    seed: NonNegInt = 0
    extends: str | None = None
    requires_plugins: list[str] = []
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
        place, so the engine, `evaluate` and the tasks' reports batch the evaluation split alike."""
        return self.eval.batch_size or self.data.eval_batch_size or self.data.batch_size

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe: every key with its value, builder defaults included."""
        data = self.model_dump(mode="json", exclude_none=True, exclude={"source", "extends"})
        for section, registry_kind in _BUILDER_SECTIONS.items():
            if section == "model":
                continue  # a model default may be a fact the data provides: written out, it would override it
            fn = _builder_for(section, getattr(self, section).name)
            if fn is None:
                continue
            defaults = {k: d for k, (_, d) in parameters(fn).items()
                        if d is not _EMPTY and d is not None and k not in data[section] and _plain(d)
                        and k not in _CONTEXT_KEYS.get(section, ())}
            merged = {**defaults, **{k: v for k, v in data[section].items() if k != "name"}}
            data[section] = {"name": data[section]["name"], **dict(sorted(merged.items()))}
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(_toml_safe(self.to_dict()))


#: Recipe keys (prefixes) that change how visibly or how often a run saves, not what it computes: a resumed run may
#: change them, and `compare` does not label runs by them. (Not epochs: schedules such as one-cycle are laid out
#: over the original length.)
NON_COMPUTING_KEYS = ("train.progress", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                      "train.threads", "train.keep_freed_memory", "train.trackers", "train.callbacks", "sweep")

_BUILDER_SECTIONS = {"task": "tasks", "data": "datasets", "model": "models", "optimizer": "optimizers",
                     "scheduler": "schedulers"}
# Parameters a builder receives from the engine, never from the recipe table.
_CONTEXT_KEYS = {"optimizer": ("params",), "scheduler": ("optimizer", "total_steps", "steps_per_epoch", "epochs"),
                 "data": ("data_dir", "seed", "splits", "val_split")}
_EMPTY = __import__("inspect").Parameter.empty


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, tuple, list, dict))


def _toml_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_safe(v) for v in value]
    return value


def _builder_for(section: str, name: str) -> Any:
    from .registry import ALL

    registry = ALL[_BUILDER_SECTIONS[section]]
    return registry.get(name) if name in registry else None


# -- reading -------------------------------------------------------------------------------------------------------
def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read recipe: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        place = f"{path}:{where.group(1)}:{where.group(2)}" if where else str(path)
        raise RecipeError(f"{place}: invalid TOML: {message}") from None


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; anything else (lists included) in `top` replaces `base`."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_extends(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise RecipeError(f"extends: cycle in recipe inheritance: {cycle}")
    data = read_toml(path)  # messages name the file as the user wrote it
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(f"{path}: extends: must be a path string (got {parent!r})")
    parent_path = (path.parent / parent)
    if not parent_path.exists():
        raise RecipeError(f"{path}: extends: base recipe '{parent}' not found (looked for {parent_path})")
    base = resolve_extends(parent_path, (*_chain, resolved))
    base.pop("name", None)  # a child is its own experiment unless it says otherwise
    return deep_merge(base, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=VALUE' -> (['a', 'b'], value). VALUE is a TOML literal; a bare word is taken as a string."""
    if "=" not in text:
        raise RecipeError(f"--set {text}: expected KEY=VALUE, e.g. --set optimizer.lr=0.01")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    parts = key.split(".")
    if not key or any(not p or not p.replace("_", "").replace("-", "").isalnum() for p in parts):
        raise RecipeError(f"--set {text}: '{key}' is not a dotted key path such as train.epochs")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if raw and not any(c in raw for c in "[]{}\"'=,#") and not raw[0].isdigit() and raw[0] not in "+-.":
            value = raw  # --set model.name=resnet18
        else:
            raise RecipeError(f"--set {text}: '{raw}' is not a valid TOML value (strings may be quoted, "
                              f"lists written [1, 2], tables {{a = 1}})") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"--set {text}: '{'.'.join(parts[:i + 1])}' is a value, not a table")
            node = child
        node[parts[-1]] = value
    return data


def load_recipe(path: str | Path | None = None, overrides: Sequence[str] = (),
                data: Mapping[str, Any] | None = None) -> Recipe:
    """Read, merge, override and validate a recipe; raise RecipeError listing every problem."""
    if data is None:
        if path is None:
            raise ValueError("load_recipe needs a path or data")
        data = resolve_extends(Path(path))
    data = apply_overrides(dict(data), overrides)
    if path is not None:
        data.setdefault("name", Path(path).stem)
    return validate_recipe(data, source=Path(path) if path else None)


def validate_recipe(data: Mapping[str, Any], source: Path | None = None) -> Recipe:
    """Validate core keys and every plugin table together, so all problems are reported in one go."""
    from . import plugins

    prefix = f"{source}: " if source else ""
    required = data.get("requires_plugins", [])
    if isinstance(required, list) and all(isinstance(r, str) for r in required):
        plugins.require(required)
    problems: list[str] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(dict(data))
    except ValidationError as exc:
        problems += _recipe_problems(exc, data)
    problems += check_builders(data)
    if problems:
        raise RecipeError(f"{prefix}invalid recipe", problems)
    assert recipe is not None
    recipe.source = source
    return recipe


def check_builders(data: Mapping[str, Any]) -> list[str]:
    """Check every plugin-owned table against its registered builder, before any data is loaded."""
    from .registry import ALL, TASKS

    problems: list[str] = []
    for section, kind in _BUILDER_SECTIONS.items():
        table = data.get(section, {} if section in ("optimizer", "scheduler") else None)
        if not isinstance(table, Mapping):
            continue
        default_name = _SECTION_MODELS[section].model_fields["name"].default
        name = table.get("name", default_name)
        if not isinstance(name, str):
            continue  # reported by the core validation
        registry = ALL[kind]
        if name not in registry:
            problems.append(f"{section}.name: {registry.unknown_message(name)}")
            continue
        core_keys = set(_SECTION_MODELS[section].model_fields)
        options = {k: v for k, v in table.items() if k not in core_keys}
        _, found = validate_options(registry.get(name), options, loc=section, exclude=_CONTEXT_KEYS.get(section, ()))
        problems += found
    task = data.get("task")
    task_name = task.get("name") if isinstance(task, Mapping) else None
    if isinstance(task_name, str) and task_name in TASKS:
        eval_table = data.get("eval", {})
        extras = {k: v for k, v in eval_table.items() if k not in EvalSection.model_fields} \
            if isinstance(eval_table, Mapping) else {}
        eval_fn = getattr(TASKS.get(task_name), "evaluation_options", None)
        if eval_fn is not None:
            problems += validate_options(eval_fn, extras, loc="eval")[1]
        else:
            valid = ", ".join(EvalSection.model_fields)
            problems += [f"eval.{k}: unknown key.{did_you_mean(k, EvalSection.model_fields) or ' Valid keys: ' + valid + '.'}"
                         for k in extras]
    train = data.get("train")
    callbacks = train.get("callbacks", []) if isinstance(train, Mapping) else []
    for i, cb in enumerate(callbacks if isinstance(callbacks, list) else []):
        if isinstance(cb, Mapping):
            problems += _check_callback(dict(cb), i)
    return problems


def _check_callback(cb: dict[str, Any], i: int) -> list[str]:
    from .registry import CALLBACKS

    loc = f"train.callbacks[{i}]"
    name = cb.get("name")
    if not isinstance(name, str):
        return [f"{loc}.name: required: the registered callback to use ({', '.join(CALLBACKS.names())})"]
    if name not in CALLBACKS:
        return [f"{loc}.name: {CALLBACKS.unknown_message(name)}"]
    return validate_options(CALLBACKS.get(name), {k: v for k, v in cb.items() if k != "name"}, loc=loc)[1]


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "task": TaskSection, "data": DataSection, "model": ModelSection, "optimizer": OptimizerSection,
    "scheduler": SchedulerSection, "train": TrainSection, "eval": EvalSection, "train.early_stopping": EarlyStopping,
    "sweep": SweepSection,
}


def _recipe_problems(exc: ValidationError, data: Mapping[str, Any]) -> list[str]:
    problems = []
    for line, err in zip(_format_errors(exc, "", None), exc.errors(include_url=False)):
        if err["type"] == "extra_forbidden":
            loc = [str(p) for p in err["loc"]]
            parent = ".".join(loc[:-1])
            model = _SECTION_MODELS.get(parent, Recipe if not parent else None)
            valid = [k for k, f in model.model_fields.items() if not f.exclude] if model else []
            hint = did_you_mean(loc[-1], valid) or (f" Valid keys: {', '.join(valid)}." if valid else "")
            line = f"{'.'.join(loc)}: unknown key.{hint}"
        elif err["type"] == "missing":
            loc = ".".join(str(p) for p in err["loc"])
            line = f"{loc}: required" + (" (every recipe names one)" if loc.endswith("name") else "")
        problems.append(line)
    return problems
