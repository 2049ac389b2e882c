"""Generate docs/recipe-reference.md from the recipe schema and the registered builders' signatures.

    python -m deepcourse.cli.docgen > docs/recipe-reference.md

A test regenerates it and fails when the committed file is stale, so the reference cannot drift from the code. The
meaning of each core key is its `description` in `deepcourse.recipe.schema`; builders' keys come from their signatures.
"""
from __future__ import annotations

import inspect
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from deepcourse import discovery
from deepcourse._version import __version__
from deepcourse.errors import UserError
from deepcourse.lab.pieces import PREFIX, LabChoice
from deepcourse.recipe.builders import parameters, validate_options
from deepcourse.recipe.schema import CONTEXT_KEYS, HOLDOUT, REGISTRY_PLACES, SECTION_MODELS
from deepcourse.registry import ALL, MODELS, TASKS
from deepcourse.rundir.layout import RunData, read_run

CONTEXT = {key for keys in CONTEXT_KEYS.values() for key in keys}  # filled by the engine, not the recipe


def type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        for meta in extra:
            if isinstance(meta, LabChoice):  # a built-in name or a lab piece
                return " \\| ".join([*(repr(n) for n in meta.names), f"'{PREFIX}NAME'"]) + \
                    f" (a lab {' or '.join(meta.references)} {meta.kind})"
        constraints = []
        for meta in extra:
            for item in [meta, *(getattr(meta, "metadata", None) or [])]:
                for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                    if getattr(item, attr, None) is not None:
                        constraints.append(f"{symbol} {getattr(item, attr)}")
                if getattr(item, "pattern", None):
                    constraints.append("pattern")
        return type_name(base) + (f" ({', '.join(constraints)})" if constraints else "")
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        return " or ".join(type_name(a) for a in members) + (" or none" if optional else "")
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def show_default(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return "required"
    if isinstance(value, BaseModel):
        return "(table)"
    text = repr(value)
    return f"`{text}`" if len(text) < 40 else "(see source)"


def core_tables() -> list[str]:
    lines = []
    for prefix, model in SECTION_MODELS.items():
        title = f"[{prefix}]" if prefix else "top level"
        lines += [f"### {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if field.exclude or name in SECTION_MODELS:
                continue
            default = inspect.Parameter.empty if field.is_required() else field.default
            annotation: Any = field.annotation
            if field.metadata:
                annotation = typing.Annotated[(annotation, *field.metadata)]
            lines.append(f"| `{name}` | {type_name(annotation)} | {show_default(default)} | "
                         f"{field.description or ''} |")
        if model.model_config.get("extra") == "allow":
            lines.append("| *other keys* | | | keyword arguments of the registered builder named by `name` |")
        lines.append("")
    return lines


def builder_tables() -> list[str]:
    lines = []
    for kind, section in REGISTRY_PLACES.items():
        registry = ALL[kind]
        entries = registry.entries()
        if not entries:
            continue
        where = f" (`[{section}] name = ...`)" if section and section != "train.callbacks" else \
            (" (`train.callbacks = [{name = ...}]`)" if section else "")
        lines += [f"## {kind.capitalize()}{where}", ""]
        for e in entries:
            aliases = f" (alias: {', '.join(e.aliases)})" if e.aliases else ""
            lines += [f"### `{e.name}`{aliases}", "", f"From `{e.origin}`. {e.summary}", ""]
            params = {k: v for k, v in parameters(e.obj).items() if k not in CONTEXT} if callable(e.obj) else {}
            if params:
                lines += ["| key | type | default |", "|---|---|---|"]
                for name, (annotation, default) in params.items():
                    shown = "from the dataset" if default is inspect.Parameter.empty and section == "model" \
                        else show_default(default)
                    lines.append(f"| `{name}` | {type_name(annotation)} | {shown} |")
                lines.append("")
    return lines


def reference() -> str:
    found = [p for p in discovery.plugins() if p.status == "ok"]
    head = [
        "# Recipe reference",
        "",
        "<!-- Generated by `python -m deepcourse.cli.docgen > docs/recipe-reference.md`; do not edit by hand. -->",
        "",
        f"deepcourse {__version__} with plugins: " + (", ".join(f"{p.name} ({p.dist})" for p in found) or "none")
        + ".",
        "",
        "A recipe is a TOML file. Keys of `[task]`, `[data]`, `[model]`, `[optimizer]` and `[scheduler]` other than",
        "the core keys below are the keyword arguments of the registered builder named by `name`, checked against",
        "its type hints; model parameters marked *from the dataset* are filled in by the task (`num_classes`,",
        "`vocab_size`, ...). Every key can be overridden on the command line with `--set key.path=VALUE`.",
        "",
        "## Core keys",
        "",
    ]
    return "\n".join(head + core_tables() + builder_tables()).rstrip() + "\n"


def model_zoo() -> str:
    """Every registered model that a task can build from its example facts, with parameters and forward FLOPs."""
    lines = ["# Model zoo", "",
             "<!-- Generated by `python -m deepcourse.cli.docgen zoo > docs/model-zoo.md`; do not edit by hand. -->",
             "",
             "Parameters and forward-pass FLOPs (multiply-adds count as 2) of every registered model at its default "
             "settings, for one example of each task's typical input (below each table). Recipes change them: a "
             "CIFAR-stem ResNet differs from an ImageNet-stem one.", "",
             ("FLOPs are those `torch.utils.flop_counter` counts: matrix products and convolutions, recurrent layers "
              "through their per-step matrix products (on the CPU's reference kernels, which the counter can see). "
              "Element-wise work (activations, normalisation, gates, a CRF's Viterbi search) is left out."), ""]
    for task_entry in TASKS.entries():
        lines += zoo_section(task_entry.name)
    return "\n".join(lines).rstrip() + "\n"


def zoo_section(task_name: str) -> list[str]:
    """The zoo's table for one task (no lines when the task gives no example facts or builds no model): on its
    own so a plugin's tests can check their rows of docs/model-zoo.md without counting every other model."""
    import torch

    task_entry = TASKS.entry(task_name)
    task_cls = task_entry.obj
    facts = dict(getattr(task_cls, "example_facts", {}) or {})
    if not facts:
        return []
    task = task_cls()
    batch = task.setup_example(facts)
    rows = []
    uncounted = False
    for entry in MODELS.entries():
        kwargs, problems = validate_options(entry.obj, {}, loc="model", provided=facts)
        if problems:
            continue  # needs facts this task does not provide: another task's model
        torch.manual_seed(0)
        try:
            model = entry.obj(**kwargs).eval()
        except Exception:  # noqa: BLE001 - a model that does not fit this input size
            continue
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops(task, model, batch) if batch is not None else None
        uncounted = uncounted or flops == 0
        shown_flops = "n/a" if flops is None else ("n/a ¹" if flops == 0 else _si(flops))
        rows.append(f"| `{entry.name}` | {entry.origin} | {params:,} | {shown_flops} | {entry.summary} |")
    if not rows:
        return []
    shown = ", ".join(f"{k}={_show_fact(v)}" for k, v in facts.items())
    described = f"; {task.example_input}" if task.example_input else ""
    lines = [f"## {task_entry.name}", "", f"Example input: {shown}{described}.", "",
             "| model | plugin | parameters | FLOPs | what it is |", "|---|---|---|---|---|", *rows, ""]
    if uncounted:
        lines += [("¹ the FLOP counter saw none of this model's operations (a fused kernel it has no formula for), "
                   "so its FLOPs are not known, not zero."), ""]
    return lines


def count_flops(task: Any, model: Any, batch: Any) -> int | None:
    """FLOPs of the task's evaluation step on `batch`; None when the example input does not suit the model.

    oneDNN is switched off while counting: its fused LSTM kernel (aten.mkldnn_rnn_layer) is one operation the
    counter has no formula for, so an LSTM would count 0; the reference kernels run the same matrix products as
    separate, counted operations.
    """
    import warnings

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setting oneDNN's flags warns about TF32 on Intel GPUs
        try:
            with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), counter:
                task.evaluation_step(model, batch)
        except Exception:  # noqa: BLE001 - the example input does not suit this model
            return None
    return int(counter.get_total_flops())


def _show_fact(value: Any) -> str:
    """A fact for the zoo's 'Example input' line: tensors (pretrained embeddings) by their shape."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return " x ".join(f"{n:,}" for n in shape) + " tensor"
    return str(value)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def _headline_metrics(run_summary: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    """The metrics a run's rows show: those its task named (`summary.json` "headline": one per head of a
    multi-task run), else the one it was selected on."""
    best = run_summary.get("best", {})
    headline = [m for m in run_summary.get("headline") or () if m in best]
    if headline:
        return headline
    monitor = run_summary.get("monitor") or recipe.get("train", {}).get("monitor")
    return [monitor or next((k for k in ("f1", "accuracy") if k in best), "loss")]


def results(run_dirs: list[str]) -> str:
    """A results table from finished runs' own files (summary.json, run.json, recipe.toml): never typed in."""
    lines = ["| recipe | dataset | model | split | metric | value | epochs | hardware | wall time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in run_dirs:
        run = read_run(Path(d))
        best = run.summary.get("best", {})
        hardware = f"{run.info.get('device', '?')} x{run.info.get('num_processes', 1)}"
        for metric in _headline_metrics(run.summary, run.recipe):
            value = best.get(metric)
            shown = f"{value * 100:.2f}%" if isinstance(value, float) and metric != "loss" else str(value)
            lines.append(f"| {run.name} | {run.recipe['data']['name']} | {run.recipe['model']['name']} | "
                         f"{run.eval_split} | {metric} | {shown} | {run.summary.get('epochs', '?')} | {hardware} | "
                         f"{run.summary.get('wall_time_s', '?')} s |")
    return "\n".join(lines) + "\n"


def seed_results(sweep_dirs: list[str], split: str | None = None) -> str:
    """A results table of recipes repeated over seeds (sweep folders of `deepcourse sweep RECIPE --seeds N`): each
    headline metric as mean ± std with its 95% interval, read from the runs' files; beside it a split the runs
    were not selected on: `split` (each run's best weights evaluated on it, such as test), or by default the
    holdout the runs scored themselves (`data.holdout`).

    Only seeds are pooled: the runs of a folder are grouped by their configuration (the recipe keys other than the
    seed that differ between them, as `compare` labels runs), one row per configuration, named in its recipe cell
    and said below the table; a grid sweep's points are never counted as seeds of one another."""
    from deepcourse.results.inference import evaluate_run
    from deepcourse.results.stats import summarize

    def other(run: RunData, metric: str) -> float:
        if split in (None, HOLDOUT) and isinstance(run.summary.get(HOLDOUT, {}).get(metric), (int, float)):
            return float(run.summary[HOLDOUT][metric])
        return float(evaluate_run(run.path, split=split or HOLDOUT, progress=False)[1][metric])

    groups = [group for folder in sweep_folders(sweep_dirs) for group in seed_groups(folder)]
    shown = split or (HOLDOUT if any(HOLDOUT in r.summary for _, runs in groups for r in runs) else None)
    extra = f" | {shown} (mean ± std) | {shown} 95% CI" if shown else ""
    lines = [f"| recipe | dataset | model | selected on | metric | mean ± std | 95% CI{extra} | epochs | hardware | "
             f"wall time per run |", "|---|---|---|---|---|---|---|" + ("---|---|" if shown else "") + "---|---|---|"]
    for label, runs in groups:
        first = runs[0]
        hardware = f"{first.info.get('device', '?')} x{first.info.get('num_processes', 1)}"
        wall = summarize([r.summary.get("wall_time_s", 0.0) for r in runs])
        epochs = summarize([r.summary.get("epochs", 0) for r in runs])
        for metric in _headline_metrics(first.summary, first.recipe):
            values = [r.summary.get("best", {}).get(metric) for r in runs]
            values = [v for v in values if isinstance(v, (int, float))]
            if not values:
                continue
            held = summarize([100 * v for v in values], metric, scale=100)
            name = first.name if label == first.name else f"{first.name} ({label})"
            cells = [name, first.recipe["data"]["name"], first.recipe["model"]["name"], first.eval_split,
                     metric, held.shown(2), held.interval(2)]
            if shown and (split or all(HOLDOUT in r.summary for r in runs)):
                tested = summarize([100 * other(r, metric) for r in runs], metric, scale=100)
                cells += [tested.shown(2), tested.interval(2)]
            elif shown:
                cells += ["-", "-"]
            cells += [f"{epochs.mean:.3g}", hardware, f"{wall.mean:,.0f} s"]
            lines.append("| " + " | ".join(cells) + " |")
    grouped = [label for label, runs in groups if label != runs[0].name]
    if grouped:
        lines += ["", f"One row per configuration ({len(grouped)}: {'; '.join(grouped)}), each the mean over its "
                      f"own seeds: the runs of a grid are not seeds of one another."]
    return "\n".join(lines) + "\n"


def sweep_folders(sweep_dirs: list[str]) -> list[Path]:
    """The folders to read, each once: a folder named twice (`sweep`, `./sweep/`) would count its runs twice."""
    if not sweep_dirs:
        raise UserError("docgen seeds: give one or more sweep folders (runs/<recipe>/sweep-<time>)")
    seen: dict[Path, str] = {}
    for text in sweep_dirs:
        folder = Path(text)
        if not folder.is_dir():
            raise UserError(f"docgen seeds: {text}: " + ("is a file, not a sweep folder" if folder.exists() else
                                                         "no such folder") + "; give a sweep folder "
                            "(runs/<recipe>/sweep-<time>)")
        if folder.resolve() in seen:
            raise UserError(f"docgen seeds: {seen[folder.resolve()]} and {text} are the same folder; give each "
                            f"once (its runs would count twice)")
        seen[folder.resolve()] = text
    return [Path(t) for t in seen.values()]


def seed_groups(folder: Path) -> list[tuple[str, list[RunData]]]:
    """A sweep folder's finished runs by configuration (label, runs in folder order); refused: a folder without
    finished runs, and a seed that appears twice in one configuration (a copy of a run is not another seed)."""
    from deepcourse.results.compare import labels_for

    if (folder / "summary.json").exists():
        raise UserError(f"docgen seeds: {folder} is one run; give the sweep folder that holds its seeds "
                        f"(deepcourse sweep RECIPE --seeds N makes one)")
    runs = [read_run(d) for d in sorted(folder.iterdir()) if (d / "summary.json").exists()]
    if not runs:
        raise UserError(f"docgen seeds: {folder} holds no finished runs (no <run>/summary.json); give a sweep folder "
                        f"whose runs have finished")
    groups: dict[str, list[RunData]] = {}
    for run, label in zip(runs, labels_for(runs, ignore=("seed",), distinct=False), strict=True):
        groups.setdefault(label, []).append(run)
    for members in groups.values():
        by_seed: dict[Any, RunData] = {}
        for run in members:
            same = by_seed.setdefault(run.recipe.get("seed", 0), run)
            if same is not run:
                raise UserError(f"docgen seeds: {same.path} and {run.path} are the same configuration with the "
                                f"same seed ({run.recipe.get('seed', 0)}): one run counted twice would fake its "
                                f"spread; keep one of them")
    return list(groups.items())


def main(argv: list[str]) -> int:
    """`python -m deepcourse.cli.docgen [zoo | results RUN... | seeds [--split SPLIT] SWEEP_DIR...]`; a user error
    exits 2 with one message, as the command line does."""
    discovery.load_plugins()
    try:
        if argv[:1] == ["zoo"]:
            print(model_zoo(), end="")
        elif argv[:1] == ["results"]:
            print(results(argv[1:]), end="")
        elif argv[:1] == ["seeds"]:
            split = argv[2] if argv[1:2] == ["--split"] and len(argv) > 2 else None
            if argv[1:2] == ["--split"] and split is None:
                raise UserError("docgen seeds --split: give a split name (e.g. --split test)")
            print(seed_results(argv[3:] if split else argv[1:], split), end="")
        else:
            print(reference(), end="")
    except UserError as exc:
        print(f"deepcourse: error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
