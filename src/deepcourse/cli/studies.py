"""The commands that run many trainings: `deepcourse sweep` (a grid, with seeds) and `deepcourse tune` (an Optuna
search). `deepcourse.cli.main` adds them to the command group."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
from click.core import ParameterSource

from deepcourse.cli.common import handle_errors, override_option
from deepcourse.errors import UserError


@click.command()
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option("--grid", "grids", multiple=True, metavar="KEY=V1,V2",
              help="Values to try for a recipe key (repeatable; the runs are the product).")
@click.option("--seeds", type=click.IntRange(min=1),
              help="Runs per grid point with seeds seed, seed+1, ... (default: the recipe's sweep.seeds, or 1).")
@override_option
@click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runs at a time, one process each, sharing the cores (OMP_NUM_THREADS = cores // N).")
@click.option("--runs-root", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--resume", type=click.Path(path_type=Path), help="Continue an interrupted sweep folder.")
@handle_errors
def sweep(recipe: Path | None, grids: Sequence[str], seeds: int | None, overrides: Sequence[str], jobs: int,
          runs_root: Path, resume: Path | None) -> None:
    """Run RECIPE for every combination of --grid values (and seeds), then compare the runs.

    Without --grid, the recipe's own [sweep] table says what to vary (grid = {"model.dropout" = [0, 0.5]})."""
    from deepcourse.studies.sweep import sweep as run_sweep

    if recipe is None and resume is None:
        raise UserError("give a RECIPE and --grid values, or --resume SWEEP_DIR")
    _check_folders(runs_root, resume)
    with _stopped("sweep"):
        folder = run_sweep(recipe, grids, seeds=seeds, overrides=overrides, jobs=jobs, runs_root=runs_root,
                           resume=resume, echo=click.echo)
    click.echo((folder / "compare.md").read_text(encoding="utf-8").rstrip())
    click.echo(f"\nsweep folder: {folder}")


@click.command()
@click.argument("recipe", required=False)
@override_option
@click.option("--study", "study_name", help="The study's name: the same name and --storage on several machines (or "
                                            "several commands) makes them workers of one study.")
@click.option("--storage", help="Optuna storage URL shared by every worker (postgresql://user@host/db, mysql://..., "
                                "sqlite:///file.db); default: a journal file in the study folder.")
@click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Workers (trials at a time) here, each on its own GPU when there are GPUs and with its share of "
                   "the cores; with --launcher slurm, the Slurm array's size.")
@click.option("--trials", type=click.IntRange(min=1), help="Trials to finish (default: the recipe's search.trials).")
@click.option("--runs-root", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--resume", type=click.Path(path_type=Path), help="Continue the study in this folder.")
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="Run the workers here, or submit them to Slurm as a job array (submitit; needs sbatch).")
@click.option("--cluster", type=click.Choice(["slurm", "local"]),
              help="With --launcher slurm: 'local' runs the array's workers as local processes through submitit's "
                   "local executor (to try the Slurm path without Slurm); default: Slurm, refused without sbatch.")
@click.option("--partition", help="Slurm partition.")
@click.option("--time", "time_min", default=60, show_default=True, type=click.IntRange(min=1),
              help="Slurm time limit per worker, minutes (a worker that runs out is requeued and resumes).")
@click.option("--gpus-per-worker", default=1, show_default=True, type=click.IntRange(min=0),
              help="GPUs per Slurm worker; the worker runs that many trials at a time, one GPU each (a trial is one "
                   "process on one GPU).")
@click.option("--cpus-per-worker", default=8, show_default=True, type=click.IntRange(min=1),
              help="CPU cores per Slurm worker, shared among its trials.")
@click.option("--mem", help="Slurm memory per worker, e.g. 32G.")
@handle_errors
def tune(recipe: str | None, overrides: Sequence[str], study_name: str | None, storage: str | None, jobs: int,
         trials: int | None, runs_root: Path, resume: Path | None, launcher: str, cluster: str | None,
         partition: str | None, time_min: int, gpus_per_worker: int, cpus_per_worker: int, mem: str | None) -> None:
    """Search RECIPE's [search] space with Optuna: every trial a run directory, pruned on its evaluations; then
    the best configuration over search.seeds seeds, and a report (study.md, best.toml, plots)."""
    from deepcourse.studies import tune as tuning

    if launcher == "slurm":
        _check_slurm(cluster or "slurm")  # before the study is made: a refusal leaves nothing behind
    elif cluster is not None:
        raise UserError(f"--cluster {cluster}: chooses where --launcher slurm sends its workers; add --launcher "
                        f"slurm, or leave --cluster out to run the workers here")
    _check_folders(runs_root, resume)
    spec = tuning.prepare(recipe, overrides, study_name=study_name, storage=storage, trials=trials,
                          runs_root=runs_root, resume=resume)
    if launcher == "slurm":
        from deepcourse.studies.slurm import submit

        ids = [job.job_id for job in submit(spec, jobs, partition=partition, time=time_min, gpus=gpus_per_worker,
                                            cpus=cpus_per_worker, mem=mem, cluster=cluster or "slurm")]
        where = "started as local processes (submitit's local executor)" if cluster == "local" else \
            "submitted to Slurm"
        click.echo(f"tune: {jobs} worker(s) {where} as {', '.join(ids)}; the study: {spec.folder}")
        return
    with _stopped("tune"):
        folder = tuning.tune(spec, jobs=jobs, echo=click.echo)
    click.echo((folder / "study.md").read_text(encoding="utf-8").split("![", 1)[0].rstrip())


def _check_slurm(cluster: str) -> None:
    """--launcher slurm needs submitit, and Slurm unless --cluster local is asked for."""
    try:
        from deepcourse.studies.slurm import check_cluster
    except ModuleNotFoundError as missing:
        raise UserError(f"--launcher slurm: needs the {missing.name} package (pip install 'deepcourse[slurm]')"
                        ) from None
    check_cluster(cluster)


def _check_folders(runs_root: Path, resume: Path | None) -> None:
    """Where the study will write, checked before anything runs: --runs-root for a new one (a file, or read-only,
    is named), the study's own folder with --resume (where --runs-root has no say: refused if given)."""
    from deepcourse.rundir.outputs import writable_folder

    if resume is None:
        writable_folder(runs_root, "--runs-root")
        return
    if click.get_current_context().get_parameter_source("runs_root") == ParameterSource.COMMANDLINE:
        raise UserError(f"--runs-root {runs_root}: has no effect with --resume (the study stays in {resume}); "
                        f"leave it out")
    if resume.is_dir():
        writable_folder(resume, "--resume")


@contextlib.contextmanager
def _stopped(command: str) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) on a study: its running trials saved, it exits 130 (143) as `deepcourse run` does,
    saying how to continue."""
    from deepcourse.studies.processes import Stopped

    try:
        yield
    except Stopped as stop:
        saved = "".join(f"\n  {run}" for run in stop.saved)
        click.echo(f"deepcourse: {command} {stop}" + (f"; the runs it stopped:{saved}" if saved else "") +
                   f"\nContinue with: deepcourse {command} --resume {stop.folder}", err=True)
        sys.exit(stop.exit_code)
