"""Starting a model from earlier weights: `model.init_from` (a run, a .safetensors file or a torch state dict) and
the weights a model's builder asks for (`use_weights`: the vision plugin's `model.weights = "imagenet"`).

Fine-tuning changes the model a little: a new head for other classes, another stem. So the tensors of the same name
and shape are loaded and the others keep their fresh initialisation; the run's first lines say which, and why
(missing in the source, another shape), so a typo that loads nothing cannot pass unseen: nothing matching is an
error. Loading happens only when a run starts (not on resume, whose checkpoint holds the weights, nor for
inference, whose best/ weights replace everything): a builder names its weights file through `use_weights` rather
than reading it, so `deepcourse evaluate` never needs the pretrained file.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepcourse.errors import RecipeError, UserError
from deepcourse.recipe.schema import Recipe
from deepcourse.training.checkpoint import best_folder

logger = logging.getLogger(__name__)

#: the attribute `use_weights` leaves on a model: (a function giving the weights file, the recipe key that asked)
PENDING = "_deepcourse_pending_weights"
#: file suffixes read as torch state dicts (torch.load, tensors only)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")


@dataclass
class Loaded:
    """What `load_matching` did: the tensors loaded, and those skipped with why."""

    source: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the model's, absent from the source
    reshaped: list[str] = field(default_factory=list)  # "name (source shape -> model shape)"
    unused: list[str] = field(default_factory=list)  # the source's, absent from the model

    def summary(self) -> str:
        total = len(self.matched) + len(self.missing) + len(self.reshaped)
        parts = [f"loaded {len(self.matched)} of the model's {total} tensors from {self.source}"]
        for what, names in (("missing in the source", self.missing), ("of another shape", self.reshaped),
                            ("in the source but not in the model", self.unused)):
            if names:
                parts.append(f"skipped {len(names)} {what}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
        return "; ".join(parts)


def use_weights(model: nn.Module, locate: Callable[[], Path], *, key: str,
                rename: Callable[[str], str] | None = None) -> nn.Module:
    """Ask for the weights file `locate()` gives to be loaded into `model` (matching tensors, reported) when a run
    starts; `rename` maps the file's tensor names to the model's (older layouts). `locate` raises a UserError naming
    where it looked when the file is absent. Returns `model`."""
    setattr(model, PENDING, (locate, key, rename))
    return model


def load_initial(model: nn.Module, recipe: Recipe, *, main: bool = True) -> list[Loaded]:
    """At a run's start: the weights the builder asked for (`use_weights`), then model.init_from over them."""
    sources: list[tuple[str, Callable[[], Path], Callable[[str], str] | None]] = []
    pending = getattr(model, PENDING, None)
    if pending is not None:
        sources.append((pending[1], pending[0], pending[2]))
    init_from = recipe.model.init_from
    if init_from:
        sources.append(("model.init_from", lambda: resolve(init_from), None))
    done = []
    for key, locate, rename in sources:
        path = Path(locate())
        state = read_state(path, key)
        if rename is not None:
            state = {rename(name): tensor for name, tensor in state.items()}
        done.append(load_matching(model, state, key=key, source=str(path)))
        if main:
            logger.info(f"{key}: {done[-1].summary()}")
    return done


def resolve(init_from: str) -> Path:
    """The weights file `model.init_from` names: a file; a run folder's best/ weights; a best/ folder; or a folder
    of runs (runs/<recipe>): its newest run with best weights."""
    path = Path(init_from).expanduser()
    if not path.exists():
        raise RecipeError(f"model.init_from: {path.resolve()} does not exist (a relative path is read from "
                          f"{Path.cwd()}). Give a run folder (runs/<recipe>/<id>), a .safetensors or a .pth file")
    if path.is_file():
        return path
    if (path / "best").is_dir() or (path / ".best.old").is_dir():
        return best_folder(path) / "model.safetensors"
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    runs = sorted(run for run in path.iterdir() if (run / "best" / "model.safetensors").is_file())
    if runs:
        return runs[-1] / "best" / "model.safetensors"
    raise RecipeError(f"model.init_from: {path.resolve()} holds no weights: neither best/model.safetensors (a run "
                      f"that finished an evaluation), nor model.safetensors, nor runs with best weights")


def read_state(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or of a torch state dict (also one kept under 'state_dict' or 'model')."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix not in TORCH_SUFFIXES:
            raise RecipeError(f"{key}: {path}: not a weights file (.safetensors, {', '.join(TORCH_SUFFIXES)})")
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:  # safetensors and torch report a damaged file so
        raise UserError(f"{key}: cannot read weights from {path}: {exc}") from None
    for inner in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(inner), Mapping):
            state = state[inner]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, Mapping) else {}
    if not tensors:
        raise RecipeError(f"{key}: {path} holds no state dict (a mapping of names to tensors)")
    return tensors


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], *, key: str, source: str) -> Loaded:
    """Copy the tensors of `state` whose name and shape the model's state dict has; report the rest."""
    own = model.state_dict()
    loaded = Loaded(source)
    for name, tensor in own.items():
        if name not in state:
            loaded.missing.append(name)
        elif state[name].shape != tensor.shape:
            loaded.reshaped.append(f"{name} ({_shape(state[name])} -> {_shape(tensor)})")
        else:
            loaded.matched.append(name)
    loaded.unused = [name for name in state if name not in own]
    if not loaded.matched:
        raise RecipeError(f"{key}: no tensor of {source} matches the model by name and shape. The source has "
                          f"{', '.join(list(state)[:4])}, ...; the model {', '.join(list(own)[:4])}, ...")
    model.load_state_dict({name: state[name] for name in loaded.matched}, strict=False)
    return loaded


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"
