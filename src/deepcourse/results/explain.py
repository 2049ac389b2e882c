"""`deepcourse explain`: what a trained network does with a few inputs, as figures and numbers for a lab report.

The core does what every task's explanation shares: it rebuilds the run's model with its best weights and places it
as evaluation does (device, the run's mixed precision), hands the task the inputs and the options, and writes what
the task returns (PNGs, `explain.md`, the numbers for `--json`) through a temporary folder moved into place at the
end, so a failure leaves nothing half written. The task decides what to show (`Task.explain`): Grad-CAM and feature
maps for a CNN, tag marginals and n-best paths for a tagger, drawn with the figure toolkit and the attribution
functions of `deepcourse.attribution`. The types a task fills in live in `deepcourse.task`, which
imports nothing of the run machinery, so `Task` can name them without a circle through `inference`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deepcourse.task import ExplainOptions, Explanation

__all__ = ["MAX_INPUTS", "Explanation", "ExplainOptions", "explain_run", "render"]

#: inputs one `explain` call takes: each gives several figures, and a lab report shows a handful
MAX_INPUTS = 20


def explain_run(run_dir: Path, inputs: Sequence[str], out: Path, options: ExplainOptions) -> list[Explanation]:
    """Explain `inputs` (files or text, as the run's task reads them for `predict`) with a finished run's best
    weights; writes the figures and `explain.md` into `out` (check it with `outputs.writable_folder` first)."""
    import torch

    from deepcourse.errors import UserError
    from deepcourse.results.inference import load_trained, require_nbest
    from deepcourse.rundir.files import atomic_write
    from deepcourse.task import Task
    from deepcourse.training.accelerator import make_accelerator, torch_threads

    if len(inputs) > MAX_INPUTS:
        raise UserError(f"explain: {len(inputs)} inputs; explain takes at most {MAX_INPUTS} at a time (each gives "
                        f"several figures): choose the few a report needs, or use `deepcourse predict` for many")
    require_nbest(options.nbest)
    recipe, task, _, artifacts, model = load_trained(run_dir)
    if type(task).explain is Task.explain:
        raise UserError(f"explain: task '{recipe.task.name}' has no explanations (its plugin does not implement "
                        f"Task.explain); `deepcourse predict` and `deepcourse report` still work for it")
    task.setup_data(recipe.data, splits=(), seed=recipe.data_seed, artifacts=artifacts)
    accelerator = make_accelerator(recipe, trackers=False, warn=False)
    model = accelerator.prepare_model(model, evaluation_mode=True)  # the run's device and mixed precision
    model.eval()
    for p in model.parameters():  # attributions need gradients of the inputs only
        p.requires_grad_(False)
    with torch_threads(recipe.train.threads), atomic_write(out, merge=True) as tmp:
        explained = list(task.explain(model, list(inputs), options=options, device=accelerator.device, out=tmp))
        if not any(e.numbers.get("input") is not None for e in explained):
            raise UserError("explain: the inputs gave nothing to explain (an empty file, or blank text?); nothing was "
                            "written")
        (tmp / "explain.md").write_text(render(recipe.name, run_dir, explained, str(accelerator.device),
                                               str(accelerator.mixed_precision), torch.__version__), encoding="utf-8")
    return explained


def render(name: str, run_dir: Path, explained: Sequence[Explanation], device: str, precision: str,
           torch_version: str) -> str:
    """explain.md: a short header, then each explanation's figures (with captions) and tables."""
    lines = [f"# {name}: looking inside", "", f"Run `{run_dir}`, best weights, on {device} (mixed precision: "
             f"{precision}, torch {torch_version}). Made by `deepcourse explain`.", ""]
    for e in explained:
        lines += [f"## {e.title}", ""]
        for f in e.figures:
            lines += [f"![{f.title}]({f.file})", ""]
            if f.caption:
                lines += [f.caption, ""]
        lines += list(e.notes)
    return "\n".join(lines).rstrip() + "\n"
