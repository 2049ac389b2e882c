"""The commands that look inside a network: `deepcourse explain` (attributions, feature maps, marginals, n-best
paths of a trained run) and `deepcourse lr-find` (the learning-rate range test of a recipe). `deepcourse.cli.main` adds
them to the command group."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click

from deepcourse.cli.common import handle_errors, override_option, read_inputs


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Folder for the PNGs and explain.md (default: RUN_DIR/explain); other files in it are left alone.")
@click.option("--target", help="Also explain this answer: a class (name or index) of a CNN; an entity type (PER) or "
                               "an entity's words of a tagger.")
@click.option("--topk", type=click.IntRange(min=1), help="CNN: the K most probable classes shown (default 5).")
@click.option("--nbest", type=click.IntRange(min=1),
              help="Tagger: the K best tag sequences shown (default 3, at most 100).")
@click.option("--layer", help="CNN: the module Grad-CAM weighs, a name of model.named_modules() (default: the last "
                              "convolutional stage).")
@click.option("--channels", type=click.IntRange(min=1, max=64),
              help="CNN: feature maps shown per stage, the strongest (default 8).")
@click.option("--steps", default=32, show_default=True, type=click.IntRange(min=2, max=1024),
              help="Integrated-gradient steps.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers (probabilities, attributions) as JSON.")
@handle_errors
def explain(run_dir: Path, inputs: Sequence[str], output: Path | None, target: str | None, topk: int | None,
            nbest: int | None, layer: str | None, channels: int | None, steps: int, as_json: bool) -> None:
    """Look inside a trained run on INPUTS (images or sentences, as `predict` takes them; '-' reads stdin lines):
    a CNN's filters, feature maps, Grad-CAM and integrated gradients; a tagger's CRF transitions, tag marginals,
    n-best paths and word saliency. Writes PNGs and explain.md."""
    from deepcourse.results.explain import ExplainOptions, explain_run
    from deepcourse.rundir.outputs import writable_folder

    out = writable_folder(output if output is not None else run_dir / "explain", "-o")
    items = read_inputs(inputs, "explain")
    options = ExplainOptions(target=target, topk=topk, nbest=nbest, layer=layer, channels=channels, steps=steps)
    explained = explain_run(run_dir, items, out, options)
    if as_json:
        click.echo(json.dumps({"run_dir": str(run_dir), "output": str(out),
                               "explanations": [{"title": e.title, **e.numbers} for e in explained]}, indent=1))
        return
    for e in explained:
        figures = ", ".join(f.file for f in e.figures) or "(tables in explain.md)"
        click.echo(f"{e.title.replace(chr(92), '')}: {figures}")
    click.echo(f"written: {out / 'explain.md'}")


@click.command(name="lr-find")
@click.argument("recipe", type=click.Path(path_type=Path))
@override_option
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Folder for lr_find.png, lr_find.csv and lr_find.json (default: lr-find/<recipe name>).")
@click.option("--start-lr", default=1e-7, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="The learning rate of the first step.")
@click.option("--end-lr", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="The learning rate of the last step.")
@click.option("--steps", "num_steps", default=100, show_default=True, type=click.IntRange(min=5, max=100_000),
              help="Optimizer steps from --start-lr to --end-lr (rates spaced evenly on a log scale).")
@click.option("--json", "as_json", is_flag=True, help="Print the result (suggested rate, every step) as JSON.")
@handle_errors
def lr_find(recipe: Path, overrides: Sequence[str], output: Path | None, start_lr: float, end_lr: float,
            num_steps: int, as_json: bool) -> None:
    """The learning-rate range test (Smith 2017) of RECIPE: a short run whose rate grows exponentially from
    --start-lr to --end-lr, the loss plotted against the rate, and a suggested rate. Trains nothing that is kept:
    no run directory, the model and optimizer restored."""
    from deepcourse.recipe.load import load_recipe
    from deepcourse.rundir.outputs import writable_folder
    from deepcourse.training.lrfind import check_range, find_lr

    check_range(start_lr, end_lr)  # before the recipe's data is read
    resolved = load_recipe(recipe, overrides)
    out = writable_folder(output if output is not None else Path("lr-find") / resolved.name, "-o")
    result = find_lr(resolved, out, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
        return
    click.echo(result.summary())
    click.echo(f"written: {out / 'lr_find.png'}, {out / 'lr_find.csv'} and {out / 'lr_find.json'}")
