"""The run report: curves, the task's own figures and a Markdown page for a lab report.

Everything is drawn from `metrics.jsonl`, `recipe.toml`, `summary.json` and the best weights, so a report can be
(re)made at any time after the run, on any machine, without the training data's train split.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import tomli_w

from .figures import FIGSIZE, Figure, nice, pyplot, save_figure
from .inference import load_trained
from .rundir import RunData, read_run


def plot_curves(run: RunData, out: Path) -> list[Figure]:
    """Loss and each validation metric per epoch (with the training split's, when the task measures it), learning
    rate, gradient norm and throughput per step."""
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
    figures.append(save_figure(fig, out, "loss.png", "Loss", "Training loss (logged steps and epoch means) and "
                                                         f"{split} loss per epoch."))
    for metric in run.eval_metrics():
        if metric == "loss":
            continue
        e, v = run.epoch_series(split, metric)
        fig, ax = plt.subplots(figsize=FIGSIZE)
        te, tv = run.epoch_series("train", metric)
        if te:
            ax.plot(te, tv, "o-", color="tab:blue", label="train (running, augmented batches)")
        ax.plot(e, v, "s-", color="tab:orange", label=split)
        if v:
            best = max(v) if metric not in ("loss",) else min(v)
            ax.axhline(best, color="grey", ls="--", lw=1, label=f"best {best:.4f}")
        ax.set(title=f"{run.name}: {nice(metric)}", xlabel="epoch", ylabel=nice(metric))
        ax.legend()
        against = f"Training (over each epoch's batches, as trained) and {split}" if te else split.capitalize()
        figures.append(save_figure(fig, out, f"{metric}.png", nice(metric).capitalize(),
                                   f"{against} {nice(metric)} per epoch."))
    for key, label, caption in (("lr", "learning rate", "Learning rate at each logged step."),
                                ("grad_norm", "gradient norm", "Norm of all gradients at each logged step, before "
                                                               "clipping (train.clip_grad_norm)."),
                                ("samples_per_s", "samples / s", "Training throughput between logged steps.")):
        s, v = run.step_series(key)
        if not v:
            continue
        fig, ax = plt.subplots(figsize=FIGSIZE)
        ax.plot(s, v, color="tab:green")
        ax.set(title=f"{run.name}: {label}", xlabel="optimizer step", ylabel=label)
        figures.append(save_figure(fig, out, f"{key}.png", label.capitalize(), caption))
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


def task_figures(run_dir: Path, out: Path) -> tuple[list[Figure], list[str]]:
    """The task's own figures (confusion matrix, mistakes, per-entity scores...) from the best weights."""
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
    holdout = {k: v for k, v in run.summary.get("holdout", {}).items() if isinstance(v, (int, float))}
    if holdout:
        lines += [f"## Holdout metrics (best weights, {holdout.get('num_samples', '?')} samples kept out of train: "
                  f"never trained or selected on)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in holdout.items() if k not in ("epoch", "step", "num_samples")]
        lines.append("")
    for f in figures:
        lines += [f"## {f.title}", "", f"![{f.title}]({f.file})", ""]
        if f.caption:
            lines += [f.caption, ""]
    lines += list(notes)
    lines += ["## Recipe", "", "```toml", tomli_w.dumps(run.recipe).rstrip(), "```", ""]
    return "\n".join(lines)
