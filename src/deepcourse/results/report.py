"""The run report: curves, the task's own figures and a Markdown page for a lab report.

Everything is drawn from `metrics.jsonl`, `recipe.toml`, `summary.json` and the best weights, so a report can be
(re)made at any time after the run, on any machine, without the training data's train split. The report at the end
of a run takes the recipe, task and model `fit` trained instead of validating, building and allocating them again.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import tomli_w

from deepcourse.errors import UserError
from deepcourse.figures import FIGSIZE, Figure, nice, pyplot, save_figure
from deepcourse.recipe.schema import Recipe
from deepcourse.results.card import write_card
from deepcourse.results.inference import load_trained
from deepcourse.rundir.files import load_weights
from deepcourse.rundir.layout import RunData, read_run
from deepcourse.training.build import Trained, build_run, steps_per_evaluation
from deepcourse.training.checkpoint import best_folder


def plot_curves(run: RunData, out: Path, recipe: Recipe | None = None) -> list[Figure]:
    """Loss and each validation metric per epoch (with the training split's, when the task measures it), learning
    rate (every step, the warm-up shaded), gradient norm and throughput per step. `recipe`: the run's, already
    loaded (else read from its recipe.toml)."""
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
    lr_figure = plot_learning_rate(run, out, recipe)
    if lr_figure is not None:
        figures.append(lr_figure)
    for key, label, caption in (("grad_norm", "gradient norm", "Norm of all gradients at each logged step, before "
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


def plot_learning_rate(run: RunData, out: Path, recipe: Recipe | None = None) -> Figure | None:
    """The learning rate each optimizer step used (replayed from the recipe, see `replay_schedule`) with the logged
    rates as dots, and the warm-up shaded: the steps up to the first at the peak rate."""
    steps, logged = run.step_series("lr")
    if not logged:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    used = replay_schedule(run, recipe)
    # the log records, at step s, the rate after the schedule stepped: the one step s + 1 uses
    xs, rates = (list(range(1, len(used) + 1)), used) if used else ([s + 1 for s in steps], logged)
    if used:
        ax.plot(xs, used, color="tab:green", lw=1.2, label="each step (replayed)")
        ax.plot([s + 1 for s in steps], logged, "o", color="tab:green", ms=3, label="logged")
    else:
        ax.plot(xs, logged, "o-", color="tab:green", ms=3, label="logged")
    peak = max(rates)
    first_peak = next(i for i, v in enumerate(rates) if v == peak)
    caption = ("The learning rate of every optimizer step, replayed from the recipe's optimizer and schedule; it "
               "equals every logged rate (dots: a logged step records the rate the next step uses)" if used else
               "The learning rate at each logged step, placed at the step that uses it (the schedule could not be "
               "replayed step by step)")
    if first_peak > 0 and rates[0] < peak:
        warm = xs[first_peak]
        ax.axvspan(0, warm, color="tab:orange", alpha=0.12, label=f"warm-up ({warm:,} steps)")
        caption += f"; shaded: the warm-up, the first {warm:,} steps, up to the peak rate {peak:.3g}"
    if min(rates) > 0 and peak / min(rates) > 100:
        ax.set_yscale("log")
    ax.set(title=f"{run.name}: learning rate", xlabel="optimizer step", ylabel="learning rate")
    ax.legend()
    return save_figure(fig, out, "lr.png", "Learning rate", caption + ".")


def replay_schedule(run: RunData, recipe: Recipe | None = None) -> list[float] | None:
    """The learning rate each of the run's optimizer steps used, from its recipe's optimizer and schedule stepped
    on a stand-in parameter: the log holds the rate only every `train.log_every` steps, which can hide a warm-up.
    None when the schedule cannot be replayed (a plateau schedule follows the metrics) or the replay misses any
    logged rate (an fp16 step skipped on overflow does not step the schedule)."""
    from deepcourse.recipe.load import load_recipe

    steps, logged = run.step_series("lr")
    ends = sorted((r["epoch"], r["step"]) for r in run.rows if r.get("split") == "train" and r.get("scope") == "epoch")
    total = int(run.summary.get("steps") or steps[-1])
    if not ends or total > 10_000_000:
        return None
    try:
        recipe = recipe or load_recipe(data=run.recipe)
        with contextlib.redirect_stderr(io.StringIO()):  # its warnings were printed when the run started
            replay = build_run(recipe, steps_per_epoch=ends[0][1])  # the optimizer and schedule alone
    except UserError:
        return None
    optimizer, scheduler = replay.optimizer, replay.scheduler
    assert optimizer is not None  # build_run with steps_per_epoch builds the optimizer and schedule
    if steps_per_evaluation(scheduler):
        return None
    used = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(total):
            used.append(float(optimizer.param_groups[0]["lr"]))
            optimizer.step()  # no gradients: changes nothing, but keeps the schedule's order check quiet
            scheduler.step()
    if any(not math.isclose(used[s], v, rel_tol=1e-6, abs_tol=1e-12) for s, v in zip(steps, logged, strict=True)
           if s < len(used)):
        return None
    return used


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


def task_figures(run_dir: Path, out: Path, trained: Trained | None = None) -> tuple[list[Figure], list[str]]:
    """The task's own figures (confusion matrix, mistakes, per-entity scores...) from the best weights, put into
    `trained`'s model when given (the run's, as `fit` left it), else into one rebuilt from the run's files."""
    if not (run_dir / "best").is_dir():
        return [], []
    if trained is None:
        trained = load_trained(run_dir)
    else:
        load_weights(trained.model, best_folder(run_dir) / "model.safetensors")  # fit left its last weights in it
    return trained.task.report(trained.model, trained.recipe, trained.artifacts, out)


def write_report(run_dir: Path, *, with_task: bool = True, trained: Trained | None = None) -> Path:
    """Write RUN_DIR/report/ (PNGs and report.md) and the model card RUN_DIR/README.md; returns report.md. `trained`:
    the recipe, task and model of the run as `fit` returned them, used instead of reading and building them again
    from the run's files."""
    run = read_run(run_dir)
    require_metrics(run)
    out = run_dir / "report"
    figures = plot_curves(run, out, trained.recipe if trained is not None else None)
    notes: list[str] = []
    if with_task:
        extra, notes = task_figures(run_dir, out, trained)
        figures += extra
    md = out / "report.md"
    md.write_text(render_markdown(run, figures, notes), encoding="utf-8")
    write_card(run_dir)  # RUN_DIR/README.md, the model card, with the figures just drawn
    return md


def require_metrics(run: RunData) -> None:
    """A report is drawn from the run's metrics.jsonl: without a logged event every figure would be empty, so say
    which file is missing or empty instead (before the report folder is made)."""
    path = run.path / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"report: {path} is missing: the run has no logged metrics to draw (it stopped before its "
                        f"first logged step, or the file was removed); report a run that has trained")
    if not run.rows:
        raise UserError(f"report: {path} holds no logged events (it is empty, or no line of it is a JSON object): "
                        f"nothing to draw")


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
