"""`deepcourse export`: a run's best weights as an ONNX, TorchScript or `torch.export` file, with the facts its users
need beside it, checked by running the written file.

What is exported is the task's (`Task.export_graph`): a module of tensors in and out, with the preprocessing inside
where it can be (an image classifier takes uint8 images as decoded from the files) and the rest in the facts (class
names, vocabularies, a CRF's transitions for decoding on the host: `deepcourse.results.viterbi`). The facts are written
beside the file as FILE.json, and for ONNX also into the model's metadata (key "deepcourse").

A file that merely loads proves little: after writing, the file is loaded by its own runtime (onnxruntime,
`torch.jit.load`, `torch.export.load`) and run on inputs of other sizes than the ones it was traced with, and its
outputs are compared with the in-process model's. A difference beyond the tolerance exits 1 with the largest error;
the file is then not left in place.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepcourse.errors import UserError
from deepcourse.task import ExportGraph
from deepcourse.training.build import Trained

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported": ".pt2"}
#: what each format needs installed, and how to install it
NEEDS = {"onnx": (("onnx", "onnxruntime"), "pip install 'deepcourse[export]'")}
METADATA_KEY = "deepcourse"
OPSET = 18
#: |exported - in-process| <= ATOL + RTOL * |in-process|, element-wise: float32 kernels differ between runtimes
ATOL, RTOL = 1e-4, 1e-3


class ExportMismatch(UserError):
    """The written file's outputs differ from the model's: exit 1 (the export is wrong, not the user's input)."""

    exit_code = 1


@dataclass(frozen=True)
class Exported:
    path: Path
    sidecar: Path
    max_error: float
    checked_on: dict[str, list[int]]


def default_output(run_dir: Path, fmt: str) -> Path:
    """RUN/export/model.onnx, model.torchscript.pt or model.pt2."""
    return run_dir / "export" / f"model{FORMATS[fmt]}"


def require_format(fmt: str) -> None:
    """An unknown format, or one whose runtime is not installed, before anything is loaded."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: not a format deepcourse exports; use one of {', '.join(FORMATS)}")
    modules, install = NEEDS.get(fmt, ((), ""))
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise UserError(f"--format {fmt}: needs {', '.join(missing)}, which is not installed; {install}")


def require_output(output: Path, fmt: str) -> Path:
    """A torch.export file is read back only under a name ending in .pt2 (`torch.export.load`); returns `output`."""
    if fmt == "exported" and output.suffix != ".pt2":
        raise UserError(f"-o {output}: a torch.export file's name ends in .pt2 (torch.export.load reads no other); "
                        f"use -o {output.with_suffix('.pt2')}")
    return output


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def export_trained(trained: Trained, fmt: str, output: Path, *, source: str = "") -> Exported:
    """Write `trained`'s model (eval mode, float32, CPU) as `fmt` to `output` with its facts in OUTPUT.json, then check
    the file against the model. `source`: the run directory, recorded in the facts."""
    require_format(fmt)
    require_output(output, fmt)
    task, model = trained.task, trained.model
    model = model.float().cpu().eval()
    if trained.artifacts:  # the task's vocabularies, class names and statistics, as `predict` sets it up
        task.setup_data(trained.recipe.data, splits=(), seed=trained.recipe.data_seed, artifacts=trained.artifacts)
    with torch.no_grad():
        graph = task.export_graph(model, trained.facts, trained.artifacts)
        graph.module.eval()
        expected = as_tuple(graph.module(*(graph.check or graph.inputs).values()))
    facts = describe(graph, fmt, trained, source, expected)
    output.parent.mkdir(parents=True, exist_ok=True)
    sidecar = output.with_name(output.name + ".json")
    # written in a temporary folder, renamed into place when it matches the model
    with tempfile.TemporaryDirectory(prefix=".export-", dir=output.parent) as folder:
        tmp = Path(folder) / output.name  # its own name: torch.export.load reads only files ending in .pt2
        WRITERS[fmt](graph, tmp, facts)
        got = run_written(fmt, tmp, graph.check or graph.inputs)
        error = max_error(expected, got, graph.outputs)
        if error > 0 and not close(expected, got):
            raise ExportMismatch(f"export: the {fmt} file's outputs differ from the model's by up to {error:.3g} "
                                 f"(tolerance {ATOL:g} + {RTOL:g}·|value|); {output} was not written")
        (Path(folder) / sidecar.name).write_text(json.dumps(facts, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, output)
        os.replace(Path(folder) / sidecar.name, sidecar)
    shapes = {k: list(v.shape) for k, v in (graph.check or graph.inputs).items()}
    return Exported(output, sidecar, error, shapes)


def run_written(fmt: str, path: Path, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The written file on the check's inputs; a file that fails on them (a size baked in) is a mismatch."""
    try:
        return RUNNERS[fmt](path, inputs)
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own errors for a graph that cannot run
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
        raise ExportMismatch(f"export: the written {fmt} file fails on inputs of other sizes ({shapes}): "
                             f"{first}") from None


def as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (list, tuple)):
        return tuple(out)
    raise TypeError(f"an exported module returns a tensor or a tuple of tensors, not {type(out).__name__}")


def describe(graph: ExportGraph, fmt: str, trained: Trained, source: str,
             outputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """The facts written beside the file: what goes in and comes out (names, shapes with named dynamic axes,
    dtypes), what produced it, and the task's own facts."""
    def spec(name: str, tensor: torch.Tensor, axes: Mapping[int, str]) -> dict[str, Any]:
        shape = [axes.get(i, size) for i, size in enumerate(tensor.shape)]
        return {"name": name, "shape": shape, "dtype": str(tensor.dtype).removeprefix("torch.")}

    recipe = trained.recipe
    return {"format": fmt, "run": source, "task": recipe.task.name, "model": recipe.model.name,
            "data": recipe.data.name,
            "inputs": [spec(k, v, graph.dynamic.get(k, {})) for k, v in graph.inputs.items()],
            "outputs": [spec(k, v, {}) for k, v in zip(graph.outputs, outputs)],
            "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in graph.dynamic.items()},
            **graph.facts}


# -- the three formats: write, then run the written file ----------------------------------------------------------
def write_onnx(graph: ExportGraph, path: Path, facts: Mapping[str, Any]) -> None:
    """The TorchScript-based exporter (the dynamo one needs onnxscript), then the facts as metadata. An operator ONNX
    cannot express is named in a UserError."""
    import onnx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation, and tracer notes on constants
            torch.onnx.export(graph.module, tuple(graph.inputs.values()), str(path), dynamo=False,
                              input_names=list(graph.inputs), output_names=graph.outputs,
                              dynamic_axes={k: dict(v) for k, v in graph.dynamic.items()}, opset_version=OPSET)
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        found = re.search(r"operator '([^']+)'", str(exc))
        operator = found.group(1) if found else str(exc).splitlines()[0]
        raise UserError(f"--format onnx: the model uses {operator}, which ONNX (opset {OPSET}) cannot express; "
                        f"export it with --format exported or --format torchscript") from None
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(facts)
    onnx.save(model, str(path))


def run_onnx(path: Path, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The file on onnxruntime's CPU provider; inputs the graph dropped as unused are not fed."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feed = {k: v.numpy() for k, v in inputs.items() if k in wanted}
    return tuple(torch.from_numpy(out) for out in session.run(None, feed))


def write_torchscript(graph: ExportGraph, path: Path, facts: Mapping[str, Any]) -> None:
    """A trace (shapes along the dynamic axes stay free when the module does not branch on them), with the facts
    as the extra file deepcourse.json."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on constants, torch.jit's deprecation notice
        traced = torch.jit.trace(graph.module, tuple(graph.inputs.values()), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(facts)})


def run_torchscript(path: Path, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        return as_tuple(torch.jit.load(str(path))(*inputs.values()))


def write_exported(graph: ExportGraph, path: Path, facts: Mapping[str, Any]) -> None:
    """`torch.export` with every dynamic axis marked dynamic. An axis the code fixes to the example's size (an LSTM
    is unrolled over the sentence's length) is refused, naming it: a file that reads one sentence length only is
    no export of a tagger."""
    dynamic = torch.export.Dim.DYNAMIC
    shapes = tuple({axis: dynamic for axis in graph.dynamic.get(name, {})} or None for name in graph.inputs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # notes on an RNN's flat weights, which the program keeps as constants
            program = torch.export.export(graph.module, tuple(graph.inputs.values()), dynamic_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - torch.export fails in many ways (graph breaks, data-dependent shapes)
        fixed = sorted({graph.dynamic.get(name, {}).get(int(axis), f"{name}[{axis}]")
                        for name, axis in re.findall(r"L\['(\w+)'\]\.size\(\)\[(\d+)\]", str(exc))})
        reason = f"the model fixes the {', '.join(fixed)} axis to the example's size" if fixed else \
            (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--format exported: torch.export cannot capture the model ({reason}); use --format onnx "
                        f"or --format torchscript") from None
    torch.export.save(program, str(path), extra_files={f"{METADATA_KEY}.json": json.dumps(facts)})


def run_exported(path: Path, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return as_tuple(torch.export.load(str(path)).module()(*inputs.values()))


Writer = Callable[[ExportGraph, Path, Mapping[str, Any]], None]
Runner = Callable[[Path, Mapping[str, torch.Tensor]], tuple[torch.Tensor, ...]]
WRITERS: dict[str, Writer] = {"onnx": write_onnx, "torchscript": write_torchscript, "exported": write_exported}
RUNNERS: dict[str, Runner] = {"onnx": run_onnx, "torchscript": run_torchscript, "exported": run_exported}


# -- the check ------------------------------------------------------------------------------------------------------
def max_error(expected: Sequence[torch.Tensor], got: Sequence[torch.Tensor], names: Sequence[str]) -> float:
    """The largest element-wise difference over every output; a missing output or another shape is a mismatch."""
    if len(got) != len(expected):
        raise ExportMismatch(f"export: the written file returns {len(got)} output(s), the model {len(expected)} "
                             f"({', '.join(names)})")
    worst = 0.0
    for name, want, have in zip(names, expected, got):
        if tuple(want.shape) != tuple(have.shape):
            raise ExportMismatch(f"export: output '{name}' of the written file is {tuple(have.shape)}, the model's "
                                 f"{tuple(want.shape)} (a size baked in when the file was written?)")
        if want.numel():
            worst = max(worst, float((want.double() - have.double()).abs().max()))
    return worst


def close(expected: Sequence[torch.Tensor], got: Sequence[torch.Tensor]) -> bool:
    return all(torch.allclose(h.double(), w.double(), atol=ATOL, rtol=RTOL) for w, h in zip(expected, got))


def read_facts(path: Path) -> dict[str, Any]:
    """The facts of an exported file, from its FILE.json (every format) or, for ONNX, its own metadata."""
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        return dict(json.loads(sidecar.read_text(encoding="utf-8")))
    if path.suffix == ".onnx":
        import onnx

        for entry in onnx.load(str(path), load_external_data=False).metadata_props:
            if entry.key == METADATA_KEY:
                return dict(json.loads(entry.value))
    raise UserError(f"{path}: no facts beside it ({sidecar} is missing) or in it")
