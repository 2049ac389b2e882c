"""Reports from a run directory's own files: curves, task figures and a Markdown page for a lab report.

Everything is drawn from `metrics.jsonl`, `recipe.toml`, `summary.json` and the best weights, so a report can be
(re)made at any time after the run, on any machine, without the training data's train split.
"""
from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rundir import read_metrics, require_run_dir

FIGSIZE = (6.4, 4.0)
DPI = 120
STEP_KEYS = {"lr", "samples_per_s", "loss"}
NOT_METRICS = {"event", "epoch", "step", "split", "scope", "seconds", "num_samples"}


@dataclass
class RunData:
    path: Path
    recipe: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return self.recipe.get("name", self.path.name)

    @property
    def eval_split(self) -> str:
        return self.recipe.get("eval", {}).get("split", "validation")

    def epoch_series(self, split: str, key: str) -> tuple[list[int], list[float]]:
        points = [(r["epoch"], r[key]) for r in self.rows
                  if r.get("split") == split and r.get("scope", "epoch") == "epoch" and key in r]
        return [p[0] for p in points], [p[1] for p in points]

    def step_series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in self.rows
                  if r.get("split") == "train" and r.get("scope") == "step" and key in r]
        return [p[0] for p in points], [p[1] for p in points]

    def eval_metrics(self) -> list[str]:
        names: list[str] = []
        for r in self.rows:
            if r.get("split") == self.eval_split:
                names += [k for k, v in r.items() if k not in NOT_METRICS and isinstance(v, (int, float))
                          and k not in names]
        return names

    def final(self) -> dict[str, float]:
        rows = [r for r in self.rows if r.get("split") == self.eval_split]
        return {k: v for k, v in rows[-1].items() if k not in NOT_METRICS} if rows else {}


@dataclass
class Figure:
    title: str
    file: str
    caption: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def read_run(run_dir: Path) -> RunData:
    require_run_dir(run_dir)
    recipe = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    summary = _read_json(run_dir / "summary.json")
    info = _read_json(run_dir / "run.json")
    return RunData(run_dir, recipe, read_metrics(run_dir / "metrics.jsonl"), summary, info)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def pyplot() -> Any:
    """matplotlib with a non-interactive backend: reports are made on servers and in CI."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "figure.dpi": DPI, "savefig.bbox": "tight"})
    return plt


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def nice(name: str) -> str:
    return name.replace("_", " ")


def plot_curves(run: RunData, out: Path) -> list[Figure]:
    """Loss and each validation metric per epoch, learning rate and throughput per step."""
    plt = pyplot()
    figures: list[Figure] = []
    split = run.eval_split

    fig, ax = plt.subplots(figsize=FIGSIZE)
    steps, step_loss = run.step_series("loss")
    epochs_per_step = _epoch_positions(run, steps)
    if step_loss:
        ax.plot(epochs_per_step, step_loss, color="tab:blue", alpha=0.25, lw=1, label="train (logged steps)")
    e, v = run.epoch_series("train", "loss")
    if e:
        ax.plot(e, v, "o-", color="tab:blue", label="train (epoch mean)")
    e, v = run.epoch_series(split, "loss")
    if e:
        ax.plot(e, v, "s-", color="tab:orange", label=split)
    ax.set(title=f"{run.name}: loss", xlabel="epoch", ylabel="loss")
    ax.legend()
    figures.append(_save(fig, out, "loss.png", "Loss", "Training loss (logged steps and epoch means) and "
                                                         f"{split} loss per epoch."))
    for metric in run.eval_metrics():
        if metric == "loss":
            continue
        e, v = run.epoch_series(split, metric)
        fig, ax = plt.subplots(figsize=FIGSIZE)
        ax.plot(e, v, "s-", color="tab:orange", label=split)
        if v:
            best = max(v) if metric not in ("loss",) else min(v)
            ax.axhline(best, color="grey", ls="--", lw=1, label=f"best {best:.4f}")
        ax.set(title=f"{run.name}: {nice(metric)}", xlabel="epoch", ylabel=nice(metric))
        ax.legend()
        figures.append(_save(fig, out, f"{metric}.png", nice(metric).capitalize(), f"{split} {nice(metric)} per "
                                                                                    "epoch."))
    for key, label, caption in (("lr", "learning rate", "Learning rate at each logged step."),
                                ("samples_per_s", "samples / s", "Training throughput between logged steps.")):
        s, v = run.step_series(key)
        if not v:
            continue
        fig, ax = plt.subplots(figsize=FIGSIZE)
        ax.plot(s, v, color="tab:green")
        ax.set(title=f"{run.name}: {label}", xlabel="optimizer step", ylabel=label)
        figures.append(_save(fig, out, f"{key}.png", label.capitalize(), caption))
    return figures


def _epoch_positions(run: RunData, steps: Sequence[int]) -> list[float]:
    """Place logged steps on the epoch axis (epoch k ends at x = k)."""
    ends = {r["epoch"]: r["step"] for r in run.rows if r.get("split") == "train" and r.get("scope") == "epoch"}
    if not ends:
        return [float(s) for s in steps]
    out = []
    bounds = sorted(ends.items())
    for s in steps:
        prev_step, x = 0, float(bounds[-1][0])
        for epoch, end in bounds:
            if s <= end:
                x = epoch - 1 + (s - prev_step) / max(end - prev_step, 1)
                break
            prev_step = end
        out.append(x)
    return out


def _save(fig: Any, out: Path, file: str, title: str, caption: str) -> Figure:
    out.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            _integer_epochs(ax)
    fig.savefig(out / file)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Figure(title, file, caption)


# -- helpers for tasks' report figures ----------------------------------------------------------------------------
def grouped_bars(path: Path, groups: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
                 xlabel: str, ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.0),
                 max_labelled_bars: int = 48, total_last: bool = False, decimals: int = 2) -> None:
    """Save a bar chart of several series side by side per group (precision / recall / F1 per entity type, accuracy
    per class...), with each bar's value written on it, so tasks' score charts look and read the same.

    The figure widens with the number of bars (up to 16 inches) instead of squeezing them, and the legend sits
    outside the axes, where it cannot hide a bar near 1.0. `total_last`: the last group is a total (a micro
    average), set apart by a dashed line so it is not read as one more class. `decimals`: of the value labels.
    """
    plt = pyplot()
    n_series = max(len(series), 1)
    width = min(16.0, max(FIGSIZE[0], 1.8 + len(groups) * (0.3 * n_series + 0.35)))
    long_labels = max((len(line) for g in groups for line in g.split("\n")), default=0) * len(groups) > width * 9
    fig, ax = plt.subplots(figsize=(width, FIGSIZE[1] + (0.8 if long_labels else 0.0)))
    bar = 0.8 / n_series
    labelled = len(groups) * n_series <= max_labelled_bars
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n_series - 1) / 2) * bar for g in range(len(groups))]
        bars = ax.bar(xs, values, bar, label=name, color=f"C{i % 10}")
        if labelled:
            ax.bar_label(bars, labels=["0" if v == 0 else f"{v:.{decimals}f}" for v in values], fontsize=7, padding=1,
                         rotation=90 if n_series * len(groups) > 24 else 0)
    if total_last and len(groups) > 1:
        ax.axvline(len(groups) - 1.5, color="grey", ls="--", lw=1)
    ax.set_xticks(range(len(groups)), groups, rotation=90 if long_labels else 0)
    ax.grid(axis="x", visible=False)
    if ylim is not None:
        rotated = labelled and n_series * len(groups) > 24
        # room for the value labels above a full bar: vertical labels ("1.000") need more than horizontal ones
        ax.set_ylim(ylim[0], ylim[1] * ((1.15 if rotated else 1.08) if labelled else 1.0))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Lines of a Markdown table; cells are written with `str` (format numbers first) and must not hold `|`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#"})


def markdown_escape(text: str) -> str:
    """Text (a token, a class name) shown literally in Markdown, table cells included: `*`, `_`, `|`... escaped."""
    return text.translate(_MARKDOWN_SPECIAL)


def evaluation_split(task: Any, recipe: Any, artifacts: Any, *, samples: str = "samples"
                     ) -> tuple[Any | None, list[str]]:
    """The recipe's evaluation split for a task's report figures, loaded as `evaluate` loads it; or (None, a note
    for report.md) when that data is not on this machine, so a report made elsewhere still has its curves.
    `samples`: what the split holds, for the note (images, sentences)."""
    from .errors import UserError

    split = recipe.eval.split
    try:
        bundle = task.setup_data(recipe.data, splits=(split,), seed=recipe.seed, artifacts=artifacts)
    except UserError as exc:
        return None, [f"_No {split} figures: {exc}_", ""]
    data = bundle.splits.get(split)
    if data is None or len(data) == 0:
        return None, [f"_No {split} figures: dataset '{recipe.data.name}' has no {split} {samples} here._", ""]
    return data, []


def report_device(recipe: Any) -> Any:
    """Where a report runs the model: the GPU when there is one and the recipe allows it, as `evaluate` does."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and recipe.train.device != "cpu" else "cpu")


def report_autocast(recipe: Any, device: Any) -> Any:
    """The mixed precision `evaluate` runs the recipe's model in (bf16 anywhere, fp16 on a GPU), so that a report's
    scores are the run's scores."""
    import torch

    mode = recipe.train.mixed_precision
    enabled = mode == "bf16" or (mode == "fp16" and device.type == "cuda")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def task_figures(run_dir: Path, out: Path) -> tuple[list[Figure], list[str]]:
    """The task's own figures (confusion matrix, mistakes, per-entity scores...) from the best weights."""
    from .engine import load_trained

    if not (run_dir / "best").is_dir():
        return [], []
    recipe, task, facts, artifacts, model = load_trained(run_dir)
    return task.report(model, recipe, artifacts, out)


def write_report(run_dir: Path, *, with_task: bool = True) -> Path:
    """Write RUN_DIR/report/ (PNGs and report.md); returns the Markdown file."""
    run = read_run(run_dir)
    out = run_dir / "report"
    figures = plot_curves(run, out)
    notes: list[str] = []
    if with_task:
        extra, notes = task_figures(run_dir, out)
        figures += extra
    md = out / "report.md"
    md.write_text(render_markdown(run, figures, notes), encoding="utf-8")
    return md


def render_markdown(run: RunData, figures: Iterable[Figure], notes: Sequence[str] = ()) -> str:
    import tomli_w

    best = {k: v for k, v in run.summary.get("best", {}).items() if isinstance(v, (int, float))}
    lines = [f"# {run.name}", ""]
    if run.recipe.get("description"):
        lines += [run.recipe["description"], ""]
    lines += ["| | |", "|---|---|",
              f"| run | `{run.path}` |",
              f"| task / model / data | {run.recipe['task']['name']} / {run.recipe['model']['name']} / "
              f"{run.recipe['data']['name']} |",
              f"| parameters | {run.summary.get('num_parameters', run.info.get('num_parameters', '?')):,} |"
              if isinstance(run.summary.get("num_parameters", run.info.get("num_parameters")), int)
              else "| parameters | ? |",
              f"| epochs / steps | {run.summary.get('epochs', '?')} / {run.summary.get('steps', '?')} |",
              f"| wall time | {run.summary.get('wall_time_s', '?')} s |",
              f"| device | {run.info.get('device', '?')} x {run.info.get('num_processes', 1)}, "
              f"torch {run.info.get('torch', '?')} |", ""]
    if best:
        lines += [f"## Best {run.eval_split} metrics (epoch {best.get('epoch', '?')})", "", "| metric | value |",
                  "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in best.items() if k not in ("epoch", "step")]
        lines.append("")
    for f in figures:
        lines += [f"## {f.title}", "", f"![{f.title}]({f.file})", ""]
        if f.caption:
            lines += [f.caption, ""]
    lines += list(notes)
    lines += ["## Recipe", "", "```toml", tomli_w.dumps(run.recipe).rstrip(), "```", ""]
    return "\n".join(lines)


# -- compare ------------------------------------------------------------------------------------------------------
def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(recipes: Sequence[Mapping[str, Any]]) -> list[str]:
    from .recipe import NON_COMPUTING_KEYS

    ignored = ("name", "description", *NON_COMPUTING_KEYS)
    flat = [flatten(r) for r in recipes]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if not k.startswith(ignored) and len({json.dumps(f.get(k), sort_keys=True)
                                                                  for f in flat}) > 1]


def labels_for(runs: Sequence[RunData], ignore: Sequence[str] = ()) -> list[str]:
    """Label each run by the recipe keys that differ between the runs (`model.dropout=0.5`)."""
    keys = [k for k in differing_keys([r.recipe for r in runs]) if k not in ignore]
    if not keys:
        return [r.path.name for r in runs]
    labels = []
    for r in runs:
        flat = flatten(r.recipe)
        labels.append(", ".join(f"{k}={_short(flat.get(k))}" for k in keys))
    if len(set(labels)) < len(labels):  # same recipe run twice: tell them apart by folder
        labels = [f"{label} ({r.path.name})" for label, r in zip(labels, runs)]
    return labels


def _short(value: Any) -> str:
    return "-" if value is None else (json.dumps(value) if isinstance(value, (list, dict)) else str(value))


def summary_row(run: RunData, label: str) -> dict[str, Any]:
    best = run.summary.get("best", {})
    final = run.final()
    row: dict[str, Any] = {"run": label, "dir": str(run.path)}
    for k, v in best.items():
        if isinstance(v, (int, float)) and k not in ("step", "num_samples"):
            row[f"best {k}"] = v
    for k, v in final.items():
        if isinstance(v, (int, float)):
            row[f"final {k}"] = v
    wall = run.summary.get("wall_time_s")
    row["wall time (s)"] = round(wall, 1) if isinstance(wall, (int, float)) else None
    row["parameters"] = run.summary.get("num_parameters", run.info.get("num_parameters"))
    return row


def plot_comparison(runs: Sequence[RunData], labels: Sequence[str], out: Path,
                    groups: Sequence[str] | None = None) -> list[Figure]:
    """One figure per metric, the runs' curves on shared axes; with `groups`, mean and spread per group."""
    plt = pyplot()
    split = runs[0].eval_split
    metrics = ["loss"] + [m for m in runs[0].eval_metrics() if m != "loss"]
    figures = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(7.2, 4.5))
        series: dict[str, list[tuple[list[int], list[float]]]] = {}
        for run, label, group in zip(runs, labels, groups or labels):
            series.setdefault(group, []).append(run.epoch_series(split, metric))
        for i, (group, curves) in enumerate(series.items()):
            colour = f"C{i % 10}"
            if len(curves) == 1:
                e, v = curves[0]
                ax.plot(e, v, "o-", color=colour, label=group, ms=3)
                continue
            length = min(len(c[1]) for c in curves)
            import statistics

            xs = curves[0][0][:length]
            mean = [statistics.fmean(c[1][j] for c in curves) for j in range(length)]
            low = [min(c[1][j] for c in curves) for j in range(length)]
            high = [max(c[1][j] for c in curves) for j in range(length)]
            ax.plot(xs, mean, "o-", color=colour, ms=3, label=f"{group} (mean of {len(curves)})")
            ax.fill_between(xs, low, high, color=colour, alpha=0.2)
        if metric == "loss":
            for i, (run, group) in enumerate(zip(runs, groups or labels)):
                e, v = run.epoch_series("train", "loss")
                idx = list(series).index(group)
                ax.plot(e, v, ":", color=f"C{idx % 10}", lw=1)
        title = f"{split} {nice(metric)}" + (" (solid) and train loss (dotted)" if metric == "loss" else "")
        ax.set(title=title, xlabel="epoch", ylabel=nice(metric))
        ax.legend(fontsize=8)
        figures.append(_save(fig, out, f"compare_{metric}.png", f"{split} {nice(metric)}", ""))
    return figures


def write_table(rows: Sequence[Mapping[str, Any]], out: Path, stem: str = "compare") -> tuple[Path, Path]:
    import csv

    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns and k != "dir"]
    md_lines = markdown_table(columns, ([_fmt(r.get(c), c) for c in columns] for r in rows))
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    md.write_text("\n".join(md_lines) + "\n", encoding="utf-8")
    csv_path = out / f"{stem}.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns + ["dir"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return md, csv_path


def _fmt(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if "time" in column or abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def compare_runs(run_dirs: Sequence[Path], out: Path) -> tuple[list[dict[str, Any]], Path]:
    runs = [read_run(p) for p in run_dirs]
    labels = labels_for(runs)
    rows = [summary_row(r, label) for r, label in zip(runs, labels)]
    plot_comparison(runs, labels, out)
    md, _ = write_table(rows, out)
    return rows, md
