"""Commands that take a finished run out of deepcourse: `export` (ONNX, TorchScript, torch.export), `card` (a
Hugging Face model card, RUN/README.md) and `push` (the weights, card, recipe and figures to the Hugging Face Hub)."""
from __future__ import annotations

from pathlib import Path

import click

from deepcourse.cli.common import handle_errors


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "exported"]), default="onnx",
              show_default=True, help="onnx (onnxruntime and every ONNX runtime), torchscript (torch.jit.load) or "
                                      "exported (torch.export.load, a .pt2 file).")
@click.option("-o", "--output", type=click.Path(path_type=Path), metavar="FILE",
              help="Write here (default: RUN_DIR/export/model.onnx, model.torchscript.pt or model.pt2).")
@handle_errors
def export(run_dir: Path, fmt: str, output: Path | None) -> None:
    """Export a run's best weights with their preprocessing facts (FILE.json), then run the written file on real
    inputs and compare it with the model (exit 1 with the largest difference when they differ)."""
    from deepcourse.results.export import default_output, export_trained, require_format, require_output
    from deepcourse.results.inference import load_trained
    from deepcourse.rundir.layout import require_run_dir
    from deepcourse.rundir.outputs import writable_file

    require_format(fmt)
    require_run_dir(run_dir)
    if output is not None:  # the default, RUN_DIR/export/, is the run's own: exported again, it is replaced
        writable_file(require_output(output, fmt), "-o")
    output = output or default_output(run_dir, fmt)
    done = export_trained(load_trained(run_dir), fmt, output, source=str(run_dir))
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in done.checked_on.items())
    click.echo(f"exported: {done.path}\nfacts: {done.sidecar}\nchecked on {shapes}: largest difference from the "
               f"model {done.max_error:.3g}")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@handle_errors
def card(run_dir: Path) -> None:
    """Write RUN_DIR/README.md, a Hugging Face model card: metadata, data, recipe, metrics (over seeds when the run
    has siblings that differ only in their seed), figures, intended use and limitations."""
    from deepcourse.results.card import write_card

    click.echo(f"model card: {write_card(run_dir)}")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("repo")
@click.option("--private", is_flag=True, help="Create the repository private (when it does not exist yet).")
@click.option("--dry-run", is_flag=True, help="Stage the folder that would be uploaded and print its files; upload "
                                              "nothing.")
@handle_errors
def push(run_dir: Path, repo: str, private: bool, dry_run: bool) -> None:
    """Upload a run's best weights (safetensors), model card, recipe and figures to the Hugging Face Hub repository
    REPO (user/name), with huggingface_hub: log in first (`hf auth login`, or HF_TOKEN)."""
    from deepcourse.results.publish import push_run

    url, files = push_run(run_dir, repo, private=private, dry_run=dry_run)
    click.echo("\n".join(f"  {f}" for f in files))
    click.echo(f"staged {len(files)} files (dry run: nothing uploaded)" if dry_run else f"pushed: {url}")
