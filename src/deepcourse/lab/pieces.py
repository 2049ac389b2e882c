"""Registering a hand-written piece: a layer, a loss or an update rule written as plain functions.

A piece is registered under a name with the reference it implements (`affine`, `batchnorm`, `softmax`, `adam`, ...:
see `deepcourse.lab.references`), in numpy (the default) or in torch without autograd. Registration stores and never
calls: a piece whose signature is wrong is reported when it is checked or trained (exit 2, naming the piece and the
signature expected), so a half-written lab still lists, and its finished pieces still check.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from deepcourse.errors import UserError, did_you_mean
from deepcourse.lab.references import LayerReference, LossReference, UpdateReference, reference
from deepcourse.registry import PIECES

__all__ = ["Piece", "PieceError", "piece", "choice", "LabChoice", "PREFIX"]

Kind = Literal["layer", "loss", "update"]
Array = Literal["numpy", "torch"]
#: how a recipe names a lab piece where a built-in component would go: `norm = "lab:my_batchnorm"`
PREFIX = "lab:"


class PieceError(UserError):
    """A piece that breaks its contract (signature, returned shapes, NaN): exit 2, naming the piece."""


@dataclass(frozen=True)
class Piece:
    """A registered piece. `functions` holds forward/backward (layer), loss (loss) or step (update)."""

    name: str
    kind: Kind
    reference_name: str
    functions: dict[str, Callable[..., Any]]
    array: Array = "numpy"

    @property
    def reference(self) -> LayerReference | LossReference | UpdateReference:
        return reference(self.kind, self.reference_name)

    @property
    def __doc__(self) -> str:  # type: ignore[override]  # what `deepcourse list pieces` shows
        return f"{self.kind} ({self.reference_name}, {self.array}): {self.reference.title}"

    def where(self, fn: str) -> str:
        """'my_layers.py:12 (affine_forward)': where the student's function is, for messages."""
        f = self.functions[fn]
        try:
            file, line = inspect.getsourcefile(f) or "?", inspect.getsourcelines(f)[1]
        except (OSError, TypeError):
            return getattr(f, "__qualname__", fn)
        return f"{file}:{line} ({getattr(f, '__qualname__', fn)})"

    def signature_problem(self) -> str:
        """What is wrong with the functions' signatures for this kind, or ''."""
        expected = self.expected()
        for fn, names in expected.items():
            f = self.functions.get(fn)
            if not callable(f):
                return f"its {fn} is {f!r}, not a function; expected {fn}({', '.join(names)})"
            try:
                params = [p for p in inspect.signature(f).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            except (TypeError, ValueError):
                continue
            required = [p for p in params if p.default is p.empty]
            if len(required) > len(names) or len(params) < len(names):
                got = ", ".join(p.name for p in params)
                return f"{fn} takes ({got}) but is called as {fn}({', '.join(names)})"
        return ""

    def expected(self) -> dict[str, tuple[str, ...]]:
        """The calls the engine and the checker make: function -> argument names."""
        if self.kind == "layer":
            ref = self.reference
            assert isinstance(ref, LayerReference)
            forward = ("x", "params", "config") if ref.takes_config else ("x", "params")
            return {"forward": forward, "backward": ("dout", "cache")}
        if self.kind == "loss":
            return {"loss": ("scores", "y")}
        return {"step": ("w", "dw", "config")}

    def require_valid(self) -> None:
        problem = self.signature_problem()
        if problem:
            raise PieceError(f"lab piece '{self.name}' ({self.kind} {self.reference_name}, {self.where_defined}): "
                             f"{problem}")

    @property
    def where_defined(self) -> str:
        first = next(iter(self.functions))
        return self.where(first)


def piece(name: str, kind: str | None = None, references: tuple[str, ...] = (), *, key: str = "") -> Piece:
    """The registered piece `name` ('lab:' optional), checked to be of `kind` and one of `references`; a PieceError
    (exit 2) names `key` and what would be valid otherwise."""
    bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
    where = f"{key}: " if key else ""
    if bare not in PIECES:
        raise PieceError(f"{where}{PIECES.unknown_message(bare)} Lab pieces are registered with deepcourse.lab.layer, "
                         f"loss or update_rule by an installed plugin (`deepcourse list pieces`)")
    found: Piece = PIECES.get(bare)
    if kind and found.kind != kind:
        raise PieceError(f"{where}lab piece '{bare}' is a {found.kind} ({found.reference_name}); a {kind} is "
                         f"needed here")
    if references and found.reference_name not in references:
        raise PieceError(f"{where}lab piece '{bare}' is a {found.reference_name} {found.kind}; this takes a "
                         f"{' or '.join(references)} {found.kind}")
    return found


def choice(choices: Any, kind: str, *references: str) -> Any:
    """A builder parameter's type that takes the built-in `choices` (a Literal) or a lab piece 'lab:NAME' of `kind`
    implementing one of `references`: `norm: lab.choice(Norm, "layer", "batchnorm", "layernorm", "groupnorm")`.
    Checked when the recipe is validated, so a wrong name exits 2 naming the key."""
    from typing import Annotated, get_args

    from pydantic import AfterValidator

    names = get_args(choices)

    def check(value: str) -> str:
        if value in names:
            return value
        if isinstance(value, str) and value.startswith(PREFIX):
            try:
                piece(value, kind, references)
            except PieceError as exc:
                raise ValueError(str(exc)) from None
            return value
        shown = ", ".join(repr(n) for n in names)
        hint = did_you_mean(value, list(names)) if isinstance(value, str) else ""
        raise ValueError(f"choose one of {shown}, or a lab {kind} '{PREFIX}NAME' ({' or '.join(references)})"
                         f"{'.' + hint if hint else ''}")

    return Annotated[str, AfterValidator(check), LabChoice(names, kind, references)]


@dataclass(frozen=True)
class LabChoice:
    """What a `choice` option takes, kept on its type for the recipe reference (pydantic ignores it)."""

    names: tuple[str, ...]
    kind: str
    references: tuple[str, ...]
