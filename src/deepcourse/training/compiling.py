"""Whether the torch.compile settings a run starts with can work where it runs, checked before anything is built.

torch.compile accepts a backend by name and fails only at the first forward pass, deep in a traceback: TensorRT on
a CPU, a backend whose package is missing, a name this torch no longer has. And a CUDA-graphs mode on a CPU does
nothing at all, without a word. Each is said here, naming the key it came from (the recipe's `train.compile`, or
`accelerate launch --dynamo_backend` / `--dynamo_mode`) and what would work:

- a backend made for another device (TensorRT, CUDA graphs, nvFuser: a CUDA GPU; HPU, Neuron, XLA) on a CPU run,
  a backend whose package is not installed, or one this torch does not know: refused (exit 2);
- a mode with a backend other than inductor (torch passes it on, and the backend ignores it or fails): refused;
- mode 'reduce-overhead' or 'max-autotune' on a CPU run: a warning, not a refusal. Their CUDA graphs need a CUDA
  GPU, and torch compiles without them on a CPU (as 'default' and 'max-autotune-no-cudagraphs'): the model trains
  exactly as it would, only the speed-up is missing, and the same recipe gets its CUDA graphs on a GPU (a recipe
  made for a GPU stays runnable as a smoke test on a laptop).
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Any

from deepcourse.errors import RecipeError, RecipeWarning

#: backends that compile for one kind of device only, and the device
DEVICE_OF = {"tensorrt": "a CUDA GPU (NVIDIA TensorRT)", "fx2trt": "a CUDA GPU (NVIDIA TensorRT)",
             "cudagraphs": "a CUDA GPU (it only records CUDA graphs, which a CPU has none of)",
             "aot_ts_nvfuser": "a CUDA GPU (nvFuser)", "nvprims_nvfuser": "a CUDA GPU (nvFuser)",
             "hpu_backend": "an Intel Gaudi (HPU) device", "neuron": "an AWS Neuron device",
             "aot_torchxla_trace_once": "an XLA device (TPU)", "torchxla_trace_once": "an XLA device (TPU)"}
#: the package a backend needs besides torch, and what to install
PACKAGE_OF = {"tensorrt": ("torch_tensorrt", "pip install torch-tensorrt"),
              "fx2trt": ("torch_tensorrt", "pip install torch-tensorrt"),
              "onnxrt": ("onnxruntime", "pip install onnxruntime"), "tvm": ("tvm", "pip install apache-tvm"),
              "hpu_backend": ("habana_frameworks", "Intel Gaudi's software stack"),
              "neuron": ("torch_neuronx", "pip install torch-neuronx")}
#: modes that record CUDA graphs, and what each is without them
CUDA_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}
#: the backends worth naming as the alternatives, best first
SUGGESTED = ("inductor", "aot_eager", "eager")


def check_compile(compiled: dict[str, Any] | None, *, from_recipe: bool, cpu: bool, warn: bool = True) -> None:
    """Refuse a backend or mode that cannot work where the run is (RecipeError), warn about CUDA graphs on a CPU."""
    if not compiled:
        return
    backend, mode = str(compiled["backend"]), compiled.get("mode")
    key = "train.compile.backend" if from_recipe else \
        "accelerate launch --dynamo_backend (ACCELERATE_DYNAMO_BACKEND)"
    mode_key = "train.compile.mode" if from_recipe else "accelerate launch --dynamo_mode (ACCELERATE_DYNAMO_MODE)"
    where = "on the CPU" if cpu else "on this machine"
    problem = unusable(backend, cpu)
    if problem:
        raise RecipeError(f"{key}: '{backend}' {problem}. Valid {where}: {usable_here(cpu)}")
    if mode not in (None, "default") and backend != "inductor":
        raise RecipeError(f"{mode_key}: '{mode}' is a mode of the 'inductor' backend, and '{backend}' has none "
                          f"(torch would pass it on, to be ignored or to fail). Remove the mode, or use backend "
                          f"'inductor'")
    if warn and cpu and mode in CUDA_GRAPH_MODES:
        warnings.warn(f"{mode_key} = '{mode}': its CUDA graphs need a CUDA GPU, and this run is on the CPU, where "
                      f"torch compiles without them (as mode '{CUDA_GRAPH_MODES[mode]}'): the model trains the same, "
                      f"without their speed-up. Set it to '{CUDA_GRAPH_MODES[mode]}' to say so", RecipeWarning,
                      stacklevel=2)


def unusable(backend: str, cpu: bool) -> str | None:
    """Why `backend` cannot compile here (the rest of a sentence), or None."""
    if cpu and backend in DEVICE_OF:
        return f"compiles for {DEVICE_OF[backend]}, and this run is on the CPU"
    if backend in PACKAGE_OF and not _importable(PACKAGE_OF[backend][0]):
        module, install = PACKAGE_OF[backend]
        return f"needs the {module} package, which is not installed ({install})"
    if not _registered(backend):
        import torch

        return f"is not a torch.compile backend of this torch ({torch.__version__}; see torch._dynamo.list_backends())"
    return None


def usable_here(cpu: bool) -> str:
    return ", ".join(f"'{b}'" for b in SUGGESTED if unusable(b, cpu) is None) + \
        " (inductor compiles; aot_eager and eager only trace, to check that a model compiles)"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _registered(backend: str) -> bool:
    from torch._dynamo.backends.registry import lookup_backend
    from torch._dynamo.exc import InvalidBackend

    try:
        lookup_backend(backend)
    except InvalidBackend:
        return False
    return True
