"""A study's results: every trial in a table, Optuna's plots, the best trial's recipe, and the best configuration
over seeds with its error bars."""
from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepcourse.figures import markdown_escape, markdown_table, pyplot
from deepcourse.results.stats import SPREAD, summarize
from deepcourse.rundir.files import atomic_write, atomic_write_text
from deepcourse.studies.study import best_trial, trial_overrides

if TYPE_CHECKING:
    import optuna

    from deepcourse.studies.spec import StudySpec

PLOTS = {"history.png": "optimization history: each trial's value and the best so far",
         "importances.png": "parameter importances (fANOVA): how much each parameter explains the values",
         "parallel.png": "parallel coordinates: every trial's parameters, coloured by its value",
         "slice.png": "each parameter against the value"}


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, in order; trials skipped for being over the budget are left out."""
    rows = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = trial.user_attrs
        if attrs.get("skipped"):
            continue
        state = "stopped" if attrs.get("stopped") else trial.state.name.lower()  # Ctrl-C: resumed, not failed
        rows.append({"trial": trial.number, "state": state, "value": trial.value,
                     **{k: v for k, v in trial.params.items()}, "wall time (s)": attrs.get("wall_time_s"),
                     "retry of": attrs.get("retry_of"), "run": attrs.get("run_dir", "")})
    return rows


def write_trials_table(spec: StudySpec, study: optuna.Study) -> Path:
    """study.md and study.csv: every trial with its state, value, parameters and wall time."""
    rows = trial_rows(study)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and (k != "retry of" or any(r.get(k) is not None
                                                                                     for r in rows))]
    with atomic_write(spec.folder / "study.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = [[_cell(row.get(c), c) for c in columns] for row in rows]
    best = best_trial(study)
    lines = [f"# Study {markdown_escape(spec.name)}", "", f"Recipe `{spec.recipe}`; {spec.monitor} is "
             f"{'maximized' if spec.direction == 'maximize' else 'minimized'}; sampler {spec.sampler}, pruner "
             f"{spec.pruner}; {sum(1 for r in rows if r['state'] in ('complete', 'pruned'))} of {spec.trials} trials "
             f"finished.", ""]
    if best is not None:
        lines += [f"Best: trial {best.number}, {spec.monitor} {best.value:.4f}"
                  f" ({', '.join(f'{k}={v}' for k, v in best.params.items())}).", ""]
    lines += markdown_table([markdown_escape(c) for c in columns], shown) + ["", ""]
    md = spec.folder / "study.md"
    atomic_write_text(md, "\n".join(lines))
    return md


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if "time" in column:
            return f"{value:,.1f}"
        return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.4f}"
    return markdown_escape(str(value))


def write_best_recipe(spec: StudySpec, study: optuna.Study) -> Path | None:
    """best.toml: the best trial's recipe, fully resolved, runnable as it is."""
    from deepcourse.recipe.load import load_recipe

    best = best_trial(study)
    if best is None:
        return None
    sets = trial_overrides(spec, best.params)
    recipe = load_recipe(spec.recipe, [*spec.overrides, *sets])
    path = spec.folder / "best.toml"
    atomic_write_text(path, f"# The best trial ({best.number}) of study {spec.name}: {spec.monitor} = {best.value}\n"
                            f"# from {spec.recipe} with {' '.join(sets) or 'no changes'}\n" + recipe.to_toml())
    return path


def write_plots(spec: StudySpec, study: optuna.Study) -> list[str]:
    """Optuna's matplotlib plots of the study (those its trials allow: importances need two finished trials)."""
    import warnings

    from optuna.visualization import matplotlib as views

    plt = pyplot()
    made = []
    plots: list[tuple[str, Callable[..., Any]]] = [
        ("history.png", views.plot_optimization_history), ("importances.png", views.plot_param_importances),
        ("parallel.png" if len(spec.dims) > 1 else "slice.png",
         views.plot_parallel_coordinate if len(spec.dims) > 1 else views.plot_slice)]
    for name, draw in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = draw(study, target_name=spec.monitor)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # too few finished trials for this plot
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.savefig(spec.folder / name, bbox_inches="tight")
        plt.close(figure)
        made.append(name)
    return made


def seeds_section(monitor: str, values: Sequence[float], runs: Sequence[str]) -> list[str]:
    """The best configuration over several seeds: mean ± std, the 95% interval, every run."""
    summary = summarize(values, monitor)
    return ["## The best configuration over seeds", "", SPREAD + ".", "",
            *markdown_table([monitor, "95% CI", "runs"], [[summary.shown(), summary.interval(),
                                                          ", ".join(f"`{r}`" for r in runs)]]), ""]


def finish_report(spec: StudySpec, study: optuna.Study, seeds: Sequence[tuple[str, float]] = ()) -> Path:
    """study.md with the plots and the seeds section appended, best.toml, study.csv."""
    md = write_trials_table(spec, study)
    best = write_best_recipe(spec, study)
    plots = write_plots(spec, study)
    extra = []
    if best is not None:
        extra += [f"The best trial's recipe: [`best.toml`]({best.name}) (`deepcourse run {best}`).", ""]
    if seeds:
        extra += seeds_section(spec.monitor, [v for _, v in seeds], [r for r, _ in seeds])
    for name in plots:
        extra += [f"![{PLOTS[name]}]({name})", "", PLOTS[name].capitalize() + ".", ""]
    atomic_write_text(md, md.read_text(encoding="utf-8") + "\n".join(extra))
    return md
