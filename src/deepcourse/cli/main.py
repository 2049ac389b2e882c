"""The `deepcourse` command line. Every user error exits 2 with one message; Ctrl-C exits 130 after saving.

Commands import torch and the plugins only when they run, so `deepcourse --help` answers at once.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import click

from deepcourse._version import __version__
from deepcourse.cli.analysis import ensemble
from deepcourse.cli.analysis import paired as paired_compare
from deepcourse.cli.common import handle_errors, read_inputs, set_verbosity
from deepcourse.cli.common import override_option as _override_option
from deepcourse.cli.completion import complete_recipe
from deepcourse.cli.inspect import explain, lr_find
from deepcourse.cli.lab import gradcheck
from deepcourse.cli.publish import card, export, push
from deepcourse.cli.studies import sweep, tune
from deepcourse.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="deepcourse")
@click.option("-q", "--quiet", count=True, help="Show warnings and errors only (the `deepcourse` logger at WARNING).")
@click.option("-v", "--verbose", count=True, help="Also show debug messages (the `deepcourse` logger at DEBUG).")
@click.pass_context
def main(ctx: click.Context, quiet: int, verbose: int) -> None:
    """Train the networks of a deep-learning course from TOML recipes.

    \b
    deepcourse run quickstart                      (a shipped recipe, by name: see `deepcourse recipes`)
    deepcourse run recipes/mnist_lenet.toml --set optimizer.lr=0.01
    deepcourse list models 'res*'
    deepcourse explain RUN_DIR digit.png           (look inside a trained network)

    Set NO_COLOR to turn colours off; shell completion: see docs/cli.md.
    """
    set_verbosity(verbose - quiet)
    if os.environ.get("NO_COLOR"):  # https://no-color.org: any non-empty value
        ctx.color = False


@main.command()
@click.argument("recipe", required=False, type=click.Path(path_type=Path), shell_complete=complete_recipe)
@_override_option
@click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this run directory.")
@click.option("--run-dir", type=click.Path(path_type=Path), help="Write the run here instead of runs/<name>/<time>/.")
@click.option("--runs-root", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="Parent folder of new run directories.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@click.option("--no-report", is_flag=True, help="Do not write RUN_DIR/report/ at the end.")
@click.option("--slurm", is_flag=True, help="This process is one task of `srun` (one task per GPU): take the rank, "
                                            "the world size and the master address from Slurm's variables.")
@handle_errors
def run(recipe: Path | None, overrides: Sequence[str], resume: Path | None, run_dir: Path | None,
        runs_root: Path, as_json: bool, no_report: bool, slurm: bool) -> None:
    """Train RECIPE, a recipe file or the name of a shipped recipe (or continue a run with --resume RUN_DIR)."""
    from deepcourse.recipe.load import load_recipe
    from deepcourse.rundir.layout import require_free
    from deepcourse.rundir.outputs import writable_folder
    from deepcourse.studies.processes import follow_parent
    from deepcourse.training.collective import on_main
    from deepcourse.training.loop import fit
    from deepcourse.training.resume import read_resume

    follow_parent()  # started by a study's worker: stop (and save) if it dies
    if slurm:  # before anything asks Accelerate who this process is
        from deepcourse.training.cluster import adopt_slurm

        adopt_slurm()
    if recipe is None and resume is None:
        raise UserError("give a RECIPE to train, or --resume RUN_DIR to continue a run")
    if resume is not None and run_dir is not None:
        raise UserError("--run-dir and --resume cannot be combined: a resumed run stays in its own directory")
    if run_dir is not None:  # where the run will write, before any data or model is built
        from deepcourse.rundir.layout import unstarted

        again = run_dir.is_dir() and unstarted(run_dir)  # a run stopped before its first checkpoint starts again there
        writable_folder(require_free(run_dir), "--run-dir", resumed=again)
    elif resume is None:
        writable_folder(runs_root, "--runs-root")
    if resume is not None:  # the run directory may be on the main process's machine only: it reads the run
        resumed = on_main(lambda: read_resume(resume, recipe, overrides))
        fitted = fit(resumed.recipe, runs_root=runs_root, resume=resumed)
    else:
        fitted = fit(load_recipe(recipe, overrides), runs_root=runs_root, run_dir=run_dir)
    from accelerate.state import PartialState

    state = PartialState()
    try:
        if state.is_main_process:
            _finish_run(fitted.summary, fitted.trained, no_report, as_json)
    finally:
        # every process leaves the group together, once the main one is done: a process that simply exited while
        # the others still held the group could abort in the group's threads at exit ("terminate called ...")
        import torch.distributed as dist

        if state.num_processes > 1 and dist.is_initialized():
            state.wait_for_everyone()
            dist.destroy_process_group()


def _finish_run(summary: dict, trained: object, no_report: bool, as_json: bool) -> None:
    """The main process's end of `run`: the report, then the summary."""
    if not no_report:
        from deepcourse.results.report import write_report

        summary["report"] = str(write_report(Path(summary["run_dir"]), trained=trained))  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        best = {k: v for k, v in summary["best"].items() if isinstance(v, (int, float)) and k != "num_samples"}
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in best.items())
        click.echo(f"done in {summary['wall_time_s']:.1f} s. best: {shown}\nrun directory: {summary['run_dir']}")
        if "report" in summary:
            click.echo(f"report: {summary['report']}")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path), shell_complete=complete_recipe)
@_override_option
@click.option("--json", "as_json", is_flag=True, help="Print the resolved recipe as JSON instead of TOML.")
@click.option("--estimate", is_flag=True, help="Instead, build the run and time a few of its steps here: print how "
                                               "long it would take on this machine (no training, no run directory).")
@handle_errors
def check(recipe: Path, overrides: Sequence[str], as_json: bool, estimate: bool) -> None:
    """Validate RECIPE and print it fully resolved (exit 0), or list every problem (exit 2)."""
    from deepcourse.recipe.load import load_recipe

    resolved = load_recipe(recipe, overrides)
    if estimate:
        from deepcourse.training.estimate import estimate_recipe

        click.echo("\n".join(line.removeprefix("deepcourse: ") for line in estimate_recipe(resolved)[1]))
        return
    click.echo(json.dumps(resolved.to_dict(), indent=1) if as_json else resolved.to_toml().rstrip())


@main.command(name="list")
@click.argument("kind", required=False, default="all")
@click.argument("pattern", required=False, default="*")
@click.option("-v", "--verbose", is_flag=True, help="Show each builder's parameters.")
@handle_errors
def list_(kind: str, pattern: str, verbose: bool) -> None:
    """Registered components: KIND is models, datasets, tasks, optimizers, schedulers, transforms, metrics,
    callbacks or all; PATTERN is a shell-style pattern such as 'res*'."""
    from deepcourse.errors import did_you_mean
    from deepcourse.recipe.builders import parameters
    from deepcourse.registry import ALL

    if kind != "all" and kind not in ALL and kind + "s" in ALL:
        kind += "s"
    if kind != "all" and kind not in ALL:
        raise UserError(f"unknown kind '{kind}'.{did_you_mean(kind, list(ALL))} Kinds: all, {', '.join(ALL)}")
    kinds = list(ALL) if kind == "all" else [kind]
    for k in kinds:
        entries = ALL[k].entries(pattern)
        if kind == "all" and not entries:
            continue
        click.secho(f"{k} ({len(entries)})", bold=True)
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            alias = f" (aka {', '.join(e.aliases)})" if e.aliases else ""
            click.echo(f"  {e.name.ljust(width)}  [{e.origin}]  {e.summary}{alias}")
            if verbose and callable(e.obj):
                for name, (ann, default) in parameters(e.obj).items():
                    shown = "required" if default is __import__("inspect").Parameter.empty else f"= {default!r}"
                    click.echo(f"      {name}: {getattr(ann, '__name__', str(ann)).replace('typing.', '')} {shown}")
        if not entries:
            click.echo(f"  (none match '{pattern}')")


@main.command()
@click.option("-v", "--verbose", is_flag=True, help="Show each plugin's components and full tracebacks.")
@handle_errors
def plugins(verbose: bool) -> None:
    """Installed plugins: distribution, version, status and errors."""
    from deepcourse import discovery

    discovery.check_heavy_modules()  # "ok" means its torchvision (or seqeval, ...) imports too
    found = discovery.plugins()
    if not found:
        click.echo("no plugins installed (pip install -e plugins/vision -e plugins/sequence)")
        return
    for p in found:
        colour = {"ok": "green", "error": "red", "incompatible": "yellow"}.get(p.status, None)
        status = click.style(f"{p.status:<12}", fg=colour)  # padded before styling: escapes take no columns
        click.echo(f"{p.name:<12} {p.dist} {p.version:<10} {status} {len(p.components)} components  ({p.target})")
        if p.error:
            click.echo(f"    {p.error}")
        if verbose:
            for kind, name in p.components:
                click.echo(f"    {kind[:-1]}: {name}")
            if p.details:
                click.echo("    " + p.details.replace("\n", "\n    "))


@main.command()
@click.argument("pattern", required=False, default="*")
@handle_errors
def recipes(pattern: str) -> None:
    """The recipes that ship with deepcourse, which run by name (`deepcourse run quickstart`); PATTERN is a
    shell-style pattern such as 'ner*' or 'ablations/*'."""
    import fnmatch

    from deepcourse.recipe import shipped

    found = {name: path for name, path in shipped.shipped().items() if fnmatch.fnmatchcase(name, pattern)}
    if not found:
        click.echo(f"no shipped recipe matches '{pattern}'" if shipped.shipped() else
                   "no recipes are shipped with this installation")
        return
    width = max(len(name) for name in found)
    for name, path in found.items():
        needs, text = shipped.describe(path)
        plugins_text = f"[{', '.join(needs)}]" if needs else "[core]"
        click.echo(f"  {name.ljust(width)}  {plugins_text:<10}  {text}")
    click.echo(f"\n{len(found)} recipe(s) in {shipped.recipes_dir()}; run one with `deepcourse run NAME`, copy one "
               f"with `deepcourse check NAME > my.toml`")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--split", help="Split to evaluate (default: the recipe's eval.split).")
@click.option("--data-dir", help="Read the split from this folder (it may hold only that split's files).")
@click.option("--checkpoint", type=click.Choice(["best", "latest"]), default="best", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--write-predictions", "predictions", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write every sample's prediction: a CSV row per image (id, gold, predicted, probability), "
                   "token / gold / predicted columns for a tagger (what conlleval reads).")
@click.option("--breakdown", is_flag=True, help="The task's breakdown of the scores instead (a tagger: F1 by entities "
                                                "seen / unseen in training, by out-of-vocabulary words, by type).")
@handle_errors
def evaluate(run_dir: Path, split: str | None, data_dir: str | None, checkpoint: str, as_json: bool,
             predictions: Path | None, breakdown: bool) -> None:
    """Metrics of a trained run's best (or latest) weights on a split."""
    from deepcourse.results.inference import breakdown_run, evaluate_run
    from deepcourse.rundir.outputs import writable_file

    if breakdown:
        numbers, lines = breakdown_run(run_dir, split=split, data_dir=data_dir, which=checkpoint)
        click.echo(json.dumps(numbers, indent=1) if as_json else "\n".join(lines))
        return
    if predictions is not None:
        writable_file(predictions, "--write-predictions")
    task, metrics = evaluate_run(run_dir, split=split, data_dir=data_dir, which=checkpoint, progress=not as_json,
                                 split_key=f"--split {split}" if split else None, predictions=predictions)
    if as_json:
        click.echo(json.dumps(metrics, indent=1))
        return
    for key, value in metrics.items():
        if isinstance(value, float):
            click.echo(f"{key:<20} {value:.4f}")
        elif isinstance(value, (int, str)):
            click.echo(f"{key:<20} {value}")
    for line in task.describe_metrics(metrics):
        click.echo(line)
    if predictions is not None:
        click.echo(f"predictions: {predictions}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input (JSON lines).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write results to this file.")
@click.option("--nbest", default=1, show_default=True, type=click.IntRange(min=1),
              help="The K best answers per input with their probabilities, K <= 100 (a tagger's K best tag sequences "
                   "as the output writes them: paths that read alike there are merged, their probabilities summed).")
@handle_errors
def predict(run_dir: Path, inputs: Sequence[str], as_json: bool, batch_size: int, output: Path | None,
            nbest: int) -> None:
    """Predict with a trained run on INPUTS (files or text, as the task takes them; '-' reads stdin lines)."""
    from deepcourse.results.inference import predict_run
    from deepcourse.results.predictions import write_lines
    from deepcourse.rundir.outputs import writable_file

    if output is not None:
        writable_file(output, "-o")
    from_stdin = list(inputs) == ["-"]
    items = read_inputs(inputs, "predict")
    task, results = predict_run(run_dir, items, batch_size=batch_size, nbest=nbest)
    written = write_lines(results, lambda r: json.dumps(r) if as_json else task.format_prediction(r), output)
    if not written:
        shown = "standard input" if from_stdin else ", ".join(map(repr, items[:3])) + (", ..." if items[3:] else "")
        raise UserError(f"predict: {shown} gave nothing to predict on (an empty file?); nothing was written")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--no-task-figures", is_flag=True, help="Only the curves (skip figures that need the best weights).")
@handle_errors
def report(run_dir: Path, no_task_figures: bool) -> None:
    """Write RUN_DIR/report/: PNG curves, the task's figures and report.md."""
    from deepcourse.results.report import write_report

    md = write_report(run_dir, with_task=not no_task_figures)
    click.echo(f"report: {md}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("comparison"), show_default=True,
              help="Folder for the PNGs and the compare.md / compare.csv tables.")
@click.option("--paired", is_flag=True, help="Test RUN_A against RUN_B on the same items of --split: McNemar's test "
                                             "(classifiers), a paired bootstrap of span F1 (taggers), and the flips.")
@click.option("--split", help="--paired: split to evaluate both on (default: the recipes' eval.split).")
@click.option("--data-dir", help="--paired: read the split from this folder, as `evaluate --data-dir`.")
@click.option("--resamples", default=1000, show_default=True, type=click.IntRange(min=1),
              help="--paired: bootstrap resamples (taggers).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="--paired: bootstrap seed.")
@click.option("--show", default=10, show_default=True, type=click.IntRange(min=0),
              help="--paired: items that flipped to list.")
@click.option("--json", "as_json", is_flag=True, help="--paired: print the result as JSON.")
@handle_errors
def compare(run_dirs: Sequence[Path], output: Path, paired: bool, split: str | None, data_dir: str | None,
            resamples: int, seed: int, show: int, as_json: bool) -> None:
    """Overlay the curves of several runs and tabulate their metrics; lines are labelled by the recipe keys
    that differ between the runs. With --paired, test two runs against each other on the same items."""
    from deepcourse.results.compare import compare_runs
    from deepcourse.rundir.outputs import writable_folder

    if paired:
        return paired_compare(run_dirs, split=split, data_dir=data_dir, resamples=resamples, seed=seed, show=show,
                              as_json=as_json)
    _, md = compare_runs(list(run_dirs), writable_folder(output, "-o"))
    click.echo(md.read_text(encoding="utf-8").rstrip())
    click.echo(f"\nwritten: {md}, {md.with_suffix('.csv')} and compare_*.png in {output}")


@main.command()
@click.option("--components", is_flag=True, help="List the installed components' names as examples of each section's "
                                                 "`name` (the output then depends on the plugins installed).")
@handle_errors
def schema(components: bool) -> None:
    """Print the recipe JSON Schema, for editor completion (Taplo, Even Better TOML: see docs/cli.md)."""
    from deepcourse.recipe.jsonschema import recipe_json_schema, render
    from deepcourse.registry import ALL

    names = {kind: [e.name for e in table.entries()] for kind, table in ALL.items()} if components else None
    click.echo(render(recipe_json_schema(names)), nl=False)


@main.command(name="new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              help="Where to create the package (default: ./deepcourse-NAME).")
@click.option("--kind", type=click.Choice(["model", "dataset", "task", "lab"]), default="model", show_default=True,
              help="What the example plugin adds: a model, a dataset, a whole task with its own data and model, or a "
                   "from-scratch lab (stubs of layers, a loss and update rules to write by hand, and their checks).")
@handle_errors
def new_plugin(name: str, directory: Path | None, kind: str) -> None:
    """Generate a working plugin package (pyproject with the entry point, a registered component, a recipe and
    a test) to start a model, dataset or task of your own; or, with --kind lab, the stubs of a from-scratch lab,
    whose tests fail as 'not written' until the stubs are written."""
    from deepcourse.cli.scaffold import new_plugin as scaffold
    from deepcourse.rundir.outputs import writable_folder

    if directory is not None:
        writable_folder(directory, "--dir")
    root = scaffold(name, directory, kind)
    (package,), (recipe,) = (root / "src").iterdir(), (root / "recipes").glob("*.toml")  # named after NAME, not --dir
    write = f"  write the stubs in {package} (see {root / 'README.md'})\n" if kind == "lab" else ""
    click.echo(f"created {root}\n\nnext:\n  pip install -e {root}\n{write}  python -m pytest {root}/tests\n"
               f"  deepcourse run {recipe}")


main.add_command(sweep)
main.add_command(tune)
main.add_command(explain)
main.add_command(lr_find)
for _command in (ensemble, export, card, push):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
main.add_command(gradcheck)
