"""Comparing runs: their curves on shared axes and a table of their metrics, each run labelled by the recipe keys
that differ between them (`model.dropout=0.5`), so an ablation reads without a legend to decode.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepcourse.errors import UserError
from deepcourse.figures import Figure, markdown_table, nice, pyplot, save_figure
from deepcourse.recipe.overrides import differing_keys, flatten
from deepcourse.recipe.schema import NON_COMPUTING_KEYS
from deepcourse.results.stats import LEGEND, differs, mean_std, summarize
from deepcourse.rundir.layout import RunData, read_run

#: keys that never label a run: its name and description, and what does not change what it computes
UNLABELLED = ("name", "description", *NON_COMPUTING_KEYS)


def check_comparable(runs: Sequence[RunData]) -> None:
    """Runs share one table and one set of axes only when they are of one task: an image classifier's accuracy
    beside a tagger's F1 reads as a comparison of numbers that do not compare."""
    tasks: dict[str, list[str]] = {}
    for run in runs:
        task = run.recipe.get("task", {}).get("name", "?") if isinstance(run.recipe.get("task"), dict) else "?"
        tasks.setdefault(task, []).append(str(run.path))
    if len(tasks) > 1:
        raise UserError("compare: the runs are of different tasks, whose metrics do not share a table; compare the "
                        "runs of one task at a time", [f"{task}: {', '.join(paths)}" for task, paths in tasks.items()])


def labels_for(runs: Sequence[RunData], ignore: Sequence[str] = (), distinct: bool = True) -> list[str]:
    """Label each run by the recipe keys that differ between the runs (`model.dropout=0.5`); `distinct`: runs of the
    same label are told apart by their folder."""
    keys = [k for k in differing_keys([r.recipe for r in runs], ignore=UNLABELLED) if k not in ignore]
    if not keys:  # the same recipe: one group, or each run by its folder
        return [r.path.name for r in runs] if distinct else [runs[0].name] * len(runs)
    labels = []
    for r in runs:
        flat = flatten(r.recipe)
        labels.append(", ".join(f"{k}={_short(flat.get(k))}" for k in keys))
    if distinct and len(set(labels)) < len(labels):  # same recipe run twice: tell them apart by folder
        labels = [f"{label} ({r.path.name})" for label, r in zip(labels, runs, strict=True)]
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
    for k, v in run.summary.get("holdout", {}).items():  # data.holdout: never trained or selected on
        if isinstance(v, (int, float)) and k not in ("epoch", "step", "num_samples"):
            row[f"holdout {k}"] = v
    wall = run.summary.get("wall_time_s")
    row["wall time (s)"] = round(wall, 1) if isinstance(wall, (int, float)) else None
    row["train time per step (ms)"] = train_ms_per_step(run)
    row["parameters"] = run.summary.get("num_parameters", run.info.get("num_parameters"))
    return row


def train_ms_per_step(run: RunData) -> float | None:
    """Training time per optimizer step (the epochs' training seconds, evaluation left out): what a hand-written
    layer or update rule costs against the built-in one."""
    seconds = sum(r["seconds"] for r in run.rows if r.get("split") == "train" and r.get("scope") == "epoch"
                  and isinstance(r.get("seconds"), int | float))
    steps = run.summary.get("steps")
    return round(1000 * seconds / steps, 2) if seconds and isinstance(steps, int) and steps > 0 else None


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
        for run, group in zip(runs, groups or labels, strict=True):
            series.setdefault(group, []).append(run.epoch_series(split, metric))
        for i, (group, curves) in enumerate(series.items()):
            colour = f"C{i % 10}"
            if len(curves) == 1:
                e, v = curves[0]
                ax.plot(e, v, "o-", color=colour, label=group, ms=3)
                continue
            length = min(len(c[1]) for c in curves)
            xs = curves[0][0][:length]
            mean = [statistics.fmean(c[1][j] for c in curves) for j in range(length)]
            low = [min(c[1][j] for c in curves) for j in range(length)]
            high = [max(c[1][j] for c in curves) for j in range(length)]
            ax.plot(xs, mean, "o-", color=colour, ms=3, label=f"{group} (mean of {len(curves)})")
            ax.fill_between(xs, low, high, color=colour, alpha=0.2)
        if metric == "loss":
            for run, group in zip(runs, groups or labels, strict=True):
                e, v = run.epoch_series("train", "loss")
                idx = list(series).index(group)
                ax.plot(e, v, ":", color=f"C{idx % 10}", lw=1)
        title = f"{split} {nice(metric)}" + (" (solid) and train loss (dotted)" if metric == "loss" else "")
        ax.set(title=title, xlabel="epoch", ylabel=nice(metric))
        ax.legend(fontsize=8)
        figures.append(save_figure(fig, out, f"compare_{metric}.png", f"{split} {nice(metric)}", ""))
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


def distinct_runs(run_dirs: Sequence[Path]) -> list[RunData]:
    """The runs to compare, each once and each with metrics: a run named twice (`run`, `./run/`, a link to it)
    would show twice, as if it were two runs, and a run without metrics adds an empty row and empty curves."""
    seen: dict[Path, Path] = {}
    for path in run_dirs:
        same = seen.setdefault(path.resolve(), path)
        if same is not path:
            shown = f"'{same}' and '{path}' are the same run" if str(same) != str(path) else f"'{path}' is given twice"
            raise UserError(f"compare: {shown}; give each run once")
    runs = [read_run(p) for p in run_dirs]
    for run in runs:
        if not has_metrics(run):
            raise UserError(f"compare: {run.path} has no metrics to compare ({run.path / 'metrics.jsonl'} holds no "
                            f"{run.eval_split} evaluation and there is no summary.json): compare runs that have "
                            f"evaluated at least once")
    if len(runs) < 2:
        raise UserError(f"compare: {run_dirs[0]} is one run; give two or more (for one run's curves: "
                        f"deepcourse report {run_dirs[0]})")
    return runs


def has_metrics(run: RunData) -> bool:
    """Whether a run has evaluated: a row of its evaluation split, or a summary's best metrics."""
    return bool(run.summary.get("best")) or any(r.get("split") == run.eval_split for r in run.rows)


def compare_runs(run_dirs: Sequence[Path], out: Path) -> tuple[list[dict[str, Any]], Path]:
    """compare.md/.csv and overlaid curves of several runs. Runs that differ only in their seed are one group:
    mean ± std, the 95% interval, and whether each group differs significantly from the best one."""
    runs = distinct_runs(run_dirs)
    check_comparable(runs)
    labels = labels_for(runs, ignore=("seed",), distinct=False)
    if len(set(labels)) < len(labels) and len(set(labels_for(runs, distinct=False))) == len(labels):  # over seeds
        md = write_grouped(runs, labels, out)
        return [summary_row(r, label) for r, label in zip(runs, labels, strict=True)], md
    labels = labels_for(runs)
    rows = [summary_row(r, label) for r, label in zip(runs, labels, strict=True)]
    plot_comparison(runs, labels, out)
    md, _ = write_table(rows, out)
    return rows, md


def write_grouped(runs: Sequence[RunData], labels: Sequence[str], out: Path) -> Path:
    """The comparison of runs repeated over seeds: one row per label, numbers as mean ± std, and for the monitored
    metric its 95% interval and a Welch's t-test against the best row (compare.csv keeps means and sds)."""
    rows = [summary_row(r, label) for r, label in zip(runs, labels, strict=True)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row, label in zip(rows, labels, strict=True):
        groups.setdefault(label, []).append(row)
    metric = runs[0].summary.get('monitor') or 'accuracy'
    monitor = f"best {metric}"
    higher = runs[0].recipe.get("train", {}).get("monitor_mode") != "min" and "loss" not in monitor
    values = {label: [r[monitor] for r in group if isinstance(r.get(monitor), (int, float))]
              for label, group in groups.items()}
    best_label = max(values, key=lambda k: statistics.fmean(values[k]) * (1 if higher else -1)) \
        if all(values.values()) else None
    table, csv_rows = [], []
    for label, group in groups.items():
        shown: dict[str, Any] = {"run": label, "seeds": len(group)}
        flat: dict[str, Any] = dict(shown)
        for key in group[0]:
            column = [r.get(key) for r in group]
            if key in ("run", "dir"):
                continue
            numbers = [v for v in column if isinstance(v, (int, float))]
            if len(column) > 1 and len(numbers) == len(column) and len(set(column)) > 1:
                mean, sd = statistics.fmean(numbers), statistics.stdev(numbers)
                shown[key] = mean_std(mean, sd, ".4f" if abs(mean) < 100 and "time" not in key else ",.1f")
                flat[key], flat[f"{key} sd"] = mean, sd
            else:
                shown[key] = flat[key] = column[0]
        if values.get(label):
            summary = summarize(values[label], metric)
            shown[f"{monitor} 95% CI"] = summary.interval()
            significant = None if best_label in (None, label) else differs(values[label], values[best_label])
            shown["vs best"] = "best" if label == best_label else {True: "differs", False: "≈", None: ""}[significant]
            flat[f"{monitor} ci low"], flat[f"{monitor} ci high"] = summary.ci_low, summary.ci_high
        table.append(shown)
        csv_rows.append(flat)
    plot_comparison(runs, labels, out, groups=labels)
    md, _ = write_table(table, out)
    md.write_text(f"{LEGEND}.\n\n" + md.read_text(encoding="utf-8"), encoding="utf-8")
    write_table(csv_rows, out, stem="compare_values")
    (out / "compare_values.md").unlink()
    (out / "compare_values.csv").replace(out / "compare.csv")
    return md
