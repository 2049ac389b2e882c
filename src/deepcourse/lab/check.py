"""The gradient checker: a hand-written piece against centered differences and against torch's own, in float64.

For a layer, every case of its reference (several shapes and the edge cases) compares the forward output and the
state it keeps with torch's layer, and every gradient the backward returns with (1) centered-difference numerical
gradients of sum(out * dout) and (2) torch's autograd gradients. A loss is checked the same way on its scores. An
update rule runs ten steps on a quadratic and five on a small network beside the torch optimizer, weights and state
compared after every step.

Errors are relative, as CS231n reports them: max |a - b| / max(|a| + |b|) over the tensor. A piece passes when every
error is under its tolerance. A piece that raises NotImplementedError is "not written"; one that breaks its contract
(signature, shapes, NaN) is a PieceError naming it; any other exception is a failure pointing at the student's line.
"""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deepcourse.lab.convert import to_array
from deepcourse.lab.modules import split_backward, split_forward, split_pair
from deepcourse.lab.pieces import Piece, PieceError
from deepcourse.lab.references import Case, LayerReference, LossReference, UpdateReference

__all__ = ["Row", "Report", "check", "rel_error", "NUMERIC_TOL", "REFERENCE_TOL", "STEP"]

#: tolerance of analytic against numerical gradients (centered differences, float64)
NUMERIC_TOL = 1e-6
#: tolerance against torch's own computation on the same float64 inputs
REFERENCE_TOL = 1e-7
#: the step of the centered differences
STEP = 1e-5


def rel_error(a: Any, b: Any) -> float:
    """max |a - b| / max(|a| + |b|): 0 for equal tensors, 1 for opposite ones, scale-free; the denominator is at
    least 1e-8 (as CS231n's), so two tensors that are both zero up to rounding agree."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(a) + np.abs(b), initial=0.0))
    diff = float(np.max(np.abs(a - b), initial=0.0))
    return 0.0 if diff == 0 else diff / max(scale, 1e-8)


@dataclass
class Row:
    case: str
    tensor: str
    against: str  # "numeric", "torch", or a property ("kept fraction")
    error: float
    tol: float

    @property
    def ok(self) -> bool:
        return bool(self.error <= self.tol)


@dataclass
class Report:
    """One piece's result: status 'ok', 'fail', 'not written' or 'bad piece', the rows, and why it failed."""

    piece: Piece
    rows: list[Row] = field(default_factory=list)
    status: str = "ok"
    message: str = ""

    @property
    def failing(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]


class _Stop(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def check(p: Piece, *, seed: int = 0) -> Report:
    """Check one piece; never raises for what the piece does (the report says it)."""
    report = Report(p)
    try:
        p.require_valid()
        checker = {"layer": _check_layer, "loss": _check_loss, "update": _check_update}[p.kind]
        checker(p, report, seed)
    except _Stop as stop:
        report.status, report.message = stop.status, stop.message
    except PieceError as exc:
        report.status, report.message = "bad piece", str(exc)
    if report.status == "ok" and report.failing:
        worst = max(report.failing, key=lambda r: r.error / r.tol)
        report.status = "fail"
        report.message = (f"{worst.tensor} differs from {worst.against} in case '{worst.case}': relative error "
                          f"{worst.error:.2e} > {worst.tol:.0e}")
    return report


# -- calling the student's code -------------------------------------------------------------------------------------
def _student_line(exc: BaseException) -> str:
    """file:line of the deepest frame in the student's code (not numpy's, torch's or deepcourse's)."""
    skip = tuple(os.path.dirname(m.__file__ or "") for m in (np, torch)) + (
        os.path.dirname(os.path.dirname(__file__)),)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(skip)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def _call(p: Piece, fn: str, case: str, *args: Any) -> Any:
    try:
        if p.array == "torch":
            with torch.no_grad():
                return p.functions[fn](*args)
        return p.functions[fn](*args)
    except NotImplementedError:
        raise _Stop("not written", f"{fn} is not written yet ({p.where(fn)} raises NotImplementedError)") from None
    except (PieceError, _Stop):
        raise
    except Exception as exc:  # noqa: BLE001 - the student's bug, reported with its line, never a traceback
        raise _Stop("fail", f"{fn} raised {type(exc).__name__} in case '{case}': {exc} (at {_student_line(exc)})") \
            from None


def _arrays(p: Piece, values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: to_array(v, p.array, copy=True) if isinstance(v, torch.Tensor) else v for k, v in values.items()}


def _tensor(p: Piece, value: Any, *, name: str, case: str, fn: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """What the piece returned as a float64 numpy array, checked for shape and finiteness."""
    try:
        a = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PieceError(f"lab {p.kind} '{p.name}': {fn} returned {name} as {type(value).__name__} in case "
                         f"'{case}'; expected an array") from None
    if shape is not None and a.shape != tuple(shape):
        raise PieceError(f"lab {p.kind} '{p.name}': {fn} returned {name} of shape {a.shape} in case '{case}'; "
                         f"expected {tuple(shape)}")
    if not np.all(np.isfinite(a)):
        raise PieceError(f"lab {p.kind} '{p.name}': {fn} returned {name} with NaN or infinite values in case "
                         f"'{case}' ({p.where(fn)}); expected finite values")
    return a


def _numeric(f: Callable[[], float], array: np.ndarray) -> np.ndarray:
    """Centered differences of f() with respect to `array`, changed in place and restored."""
    grad = np.zeros_like(array)
    flat, out = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + STEP
        plus = f()
        flat[i] = old - STEP
        minus = f()
        flat[i] = old
        out[i] = (plus - minus) / (2 * STEP)
    return grad


# -- layers --------------------------------------------------------------------------------------------------------
def _check_layer(p: Piece, report: Report, seed: int) -> None:
    ref = p.reference
    assert isinstance(ref, LayerReference)
    for index, case in enumerate(ref.cases):
        _layer_case(p, ref, case, report, torch.Generator().manual_seed(seed * 1000 + index))
        if report.failing:  # the first failing case is the one to fix; later ones would fail for the same reason
            return


def _layer_case(p: Piece, ref: LayerReference, case: Case, report: Report, g: torch.Generator) -> None:
    f64 = torch.float64
    x = torch.randn(case.x, generator=g, dtype=f64)
    if ref.kinks:  # keep inputs away from the kinks of max and relu, where no derivative exists
        x = x + 0.05 * torch.sign(x)
    params = {n: torch.randn(s, generator=g, dtype=f64) for n, s in ref.params(case.x, case.shape).items()}
    config = ref.start_config(case.x, case, g)

    # torch's layer, differentiated by autograd
    xr = x.clone().requires_grad_()
    pr = {n: t.clone().requires_grad_() for n, t in params.items()}
    cr = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in config.items()}
    out_ref = ref.forward(xr, pr, cr)
    dout = torch.randn(out_ref.shape, generator=g, dtype=f64)

    def forward(xa: Any, pa: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
        c = _arrays(p, config)
        args = (xa, pa, c) if ref.takes_config else (xa, pa)
        out, cache = split_forward(p, _call(p, "forward", case.label, *args))
        return out, cache, c

    xa, pa = to_array(x, p.array, copy=True), _arrays(p, params)
    out, cache, state = forward(xa, pa)
    out_np = _tensor(p, out, name="out", case=case.label, fn="forward", shape=tuple(out_ref.shape))
    if ref.name == "dropout":  # torch draws its own mask: compare with the piece's mask applied the torch way
        out_ref = _dropout_reference(xr, out_np, config, case, report)
    report.rows.append(Row(case.label, "out", "torch", rel_error(out_np, out_ref.detach()), REFERENCE_TOL))
    for key in ref.state:
        expected = cr[key].numpy()
        if np.all(np.isfinite(expected)):  # torch's running variance of a batch of one is NaN: nothing to compare
            ours = _tensor(p, state.get(key), name=f"config['{key}']", case=case.label, fn="forward",
                           shape=expected.shape)
            report.rows.append(Row(case.label, f"config['{key}']", "torch", rel_error(ours, expected),
                                   REFERENCE_TOL))

    (out_ref * dout).sum().backward()
    dx, dparams = split_backward(p, _call(p, "backward", case.label, to_array(dout, p.array), cache), list(params))
    grads = {"dx": _tensor(p, dx, name="dx", case=case.label, fn="backward", shape=case.x)}
    for n, t in params.items():
        grads[f"d{n}"] = _tensor(p, dparams[n], name=f"dparams['{n}']", case=case.label, fn="backward",
                                 shape=tuple(t.shape))
    dout_np = dout.numpy()
    inputs = {"dx": (xr, None)} | {f"d{n}": (pr[n], n) for n in params}
    for name, (tensor, pname) in inputs.items():
        if tensor.grad is not None:
            report.rows.append(Row(case.label, name, "torch", rel_error(grads[name], tensor.grad), REFERENCE_TOL))
        # numerical gradient of sum(out * dout), perturbing a float64 numpy copy of this input
        base_x, base_p = x.numpy().copy(), {n: t.numpy().copy() for n, t in params.items()}
        target = base_x if pname is None else base_p[pname]

        def value(bx: np.ndarray = base_x, bp: dict[str, np.ndarray] = base_p) -> float:
            xa = torch.from_numpy(bx) if p.array == "torch" else bx
            pa = {n: torch.from_numpy(a) if p.array == "torch" else a for n, a in bp.items()}
            o, _, _ = forward(xa, pa)
            return float(np.sum(np.asarray(o, dtype=np.float64) * dout_np))

        report.rows.append(Row(case.label, name, "numeric", rel_error(grads[name], _numeric(value, target)),
                               NUMERIC_TOL))


def _dropout_reference(xr: torch.Tensor, out: np.ndarray, config: dict[str, Any], case: Case,
                       report: Report) -> torch.Tensor:
    """Inverted dropout with the piece's own mask (where it kept a value), and the share it kept against 1 - p."""
    p, train = float(config["p"]), config["mode"] == "train"
    if not train or p == 0:
        return xr * 1.0
    if p == 1:
        return xr * 0.0
    mask = torch.from_numpy(out != 0)
    kept = float(mask.double().mean())
    spread = 5 * (p * (1 - p) / mask.numel()) ** 0.5  # five standard deviations of the kept share
    report.rows.append(Row(case.label, "kept share", f"1 - p = {1 - p:.2f}", abs(kept - (1 - p)), spread))
    return xr * mask / (1 - p)


# -- losses --------------------------------------------------------------------------------------------------------
def _check_loss(p: Piece, report: Report, seed: int) -> None:
    ref = p.reference
    assert isinstance(ref, LossReference)
    for index, case in enumerate(ref.cases):
        g = torch.Generator().manual_seed(seed * 1000 + index)
        n, c = case.x
        scores = torch.randn(case.x, generator=g, dtype=torch.float64) * float(case.shape.get("scale", 1.0))
        y = torch.randint(c, (n,), generator=g)
        sr = scores.clone().requires_grad_()
        value_ref = ref.value(sr, y)
        value_ref.backward()
        ya = to_array(y, p.array)

        def call(s: Any, label: str = case.label, ya: Any = ya) -> tuple[float, Any]:
            loss, dscores = split_pair(p, "loss", _call(p, "loss", label, s, ya), "(value, dscores)")
            value = _tensor(p, loss, name="the loss value", case=label, fn="loss", shape=None)
            if value.size != 1:
                raise PieceError(f"lab loss '{p.name}': returned a loss of shape {value.shape} in case '{label}'; "
                                 f"expected one number (the mean over the batch)")
            return float(value), dscores

        value, dscores = call(to_array(scores, p.array, copy=True))
        d = _tensor(p, dscores, name="dscores", case=case.label, fn="loss", shape=case.x)
        report.rows.append(Row(case.label, "loss", "torch", rel_error(value, value_ref.item()), REFERENCE_TOL))
        report.rows.append(Row(case.label, "dscores", "torch", rel_error(d, sr.grad), REFERENCE_TOL))
        base = scores.numpy().copy()

        def f(b: np.ndarray = base) -> float:
            return call(torch.from_numpy(b) if p.array == "torch" else b)[0]

        report.rows.append(Row(case.label, "dscores", "numeric", rel_error(d, _numeric(f, base)), NUMERIC_TOL))
        if report.failing:
            return


# -- update rules --------------------------------------------------------------------------------------------------
def _check_update(p: Piece, report: Report, seed: int) -> None:
    ref = p.reference
    assert isinstance(ref, UpdateReference)
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    # a quadratic: f(w) = sum(a * w**2 / 2 + b * w), gradient a * w + b
    w0 = torch.randn(4, 5, generator=g, dtype=f64)
    a, b = torch.rand(4, 5, generator=g, dtype=f64) + 0.5, torch.randn(4, 5, generator=g, dtype=f64)
    label = "quadratic, 10 steps"
    theirs = w0.clone().requires_grad_()
    opt = ref.torch([theirs], ref.hyper)
    config: dict[str, Any] = dict(ref.hyper)
    ours: Any = to_array(w0, p.array, copy=True)
    worst = 0.0
    for _ in range(10):
        dw = a * torch.as_tensor(np.asarray(ours)) + b
        ours, config = _step(p, ours, to_array(dw, p.array), config, label)
        theirs.grad = (a * theirs + b).detach()
        opt.step()
        worst = max(worst, rel_error(_tensor(p, ours, name="w", case=label, fn="step", shape=(4, 5)),
                                     theirs.detach()))
    report.rows.append(Row(label, "w", "torch", worst, REFERENCE_TOL))
    _state_rows(p, ref, config, opt.state[theirs], label, report)

    # a small network: 2 layers on 16 examples, each parameter with its own config, as the engine runs a rule
    label = "2-layer net, 5 steps"
    x, y = torch.randn(16, 4, generator=g, dtype=f64), torch.randint(3, (16,), generator=g)
    start = [torch.randn(4, 8, generator=g, dtype=f64) * 0.5, torch.zeros(8, dtype=f64),
             torch.randn(8, 3, generator=g, dtype=f64) * 0.5, torch.zeros(3, dtype=f64)]

    def grads(ws: list[torch.Tensor]) -> list[torch.Tensor]:
        ws = [w.detach().clone().requires_grad_() for w in ws]
        F.cross_entropy(torch.relu(x @ ws[0] + ws[1]) @ ws[2] + ws[3], y).backward()
        return [w.grad for w in ws]  # type: ignore[misc]

    net = [w.clone().requires_grad_() for w in start]
    opt = ref.torch(net, ref.hyper)
    mine: list[Any] = [to_array(w, p.array, copy=True) for w in start]
    configs: list[dict[str, Any]] = [dict(ref.hyper) for _ in start]
    for _ in range(5):
        for i, dw in enumerate(grads([torch.as_tensor(np.asarray(w)) for w in mine])):
            mine[i], configs[i] = _step(p, mine[i], to_array(dw, p.array), configs[i], label)
        for w, dw in zip(net, grads(net)):
            w.grad = dw
        opt.step()
    names = ["W1", "b1", "W2", "b2"]
    for name, w, t in zip(names, mine, net):
        report.rows.append(Row(label, name, "torch", rel_error(_tensor(p, w, name=name, case=label, fn="step",
                                                                       shape=tuple(t.shape)), t.detach()),
                               REFERENCE_TOL))


def _step(p: Piece, w: Any, dw: Any, config: dict[str, Any], label: str) -> tuple[Any, dict[str, Any]]:
    return split_pair(p, "step", _call(p, "step", label, w, dw, config), "(w, config) with config a dict",
                      dict_second=True)


def _state_rows(p: Piece, ref: UpdateReference, config: dict[str, Any], torch_state: dict[str, Any], label: str,
                report: Report) -> None:
    for key, (torch_key, read) in ref.state.items():
        if key not in config:
            raise PieceError(f"lab update rule '{p.name}': config has no '{key}' after {label}; the rule keeps its "
                             f"state there (expected keys: {', '.join(ref.state)})")
        expected = read(torch.as_tensor(torch_state[torch_key], dtype=torch.float64), ref.hyper)
        ours = _tensor(p, config[key], name=f"config['{key}']", case=label, fn="step", shape=tuple(expected.shape))
        report.rows.append(Row(label, f"config['{key}']", "torch", rel_error(ours, expected), REFERENCE_TOL))
