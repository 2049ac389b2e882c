"""The analysis commands beside `evaluate` and `compare`: `ensemble` (several runs as one run directory) and the
paired form of `compare` (two runs on the same items)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click

from deepcourse.cli.common import handle_errors
from deepcourse.errors import UserError


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The ensemble's run directory: a new (or empty) folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the ensemble's summary as JSON.")
@handle_errors
def ensemble(run_dirs: Sequence[Path], output: Path, as_json: bool) -> None:
    """Combine two or more finished runs of the same task, labels and data into one run directory that evaluate,
    predict and report read like any run: averaged probabilities for classifiers, averaged emission and transition
    scores for CRF taggers. It is evaluated once on the recipe's evaluation split."""
    from deepcourse.results.ensemble import make_ensemble
    from deepcourse.rundir.outputs import writable_folder

    summary = make_ensemble(list(run_dirs), writable_folder(output, "-o"), progress=not as_json)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    shown = "  ".join(f"{k} {v:.4f}" for k, v in summary["best"].items() if isinstance(v, float))
    click.echo(f"ensemble of {len(run_dirs)} runs on {summary['best']['split']}: {shown}\nrun directory: {output}")


def paired(run_dirs: Sequence[Path], *, split: str | None, data_dir: str | None, resamples: int, seed: int,
           show: int, as_json: bool) -> None:
    """`compare --paired RUN_A RUN_B`: the paired test and the items that flipped."""
    from deepcourse.results.paired import compare_paired, describe

    if len(run_dirs) != 2:
        raise UserError(f"compare --paired: give exactly two runs, RUN_A and RUN_B (got {len(run_dirs)})")
    result = compare_paired(run_dirs[0], run_dirs[1], split=split, data_dir=data_dir, resamples=resamples, seed=seed,
                            show=show)
    click.echo(json.dumps(result, indent=1) if as_json else "\n".join(describe(result)))
