"""The from-scratch labs: the checker passes correct pieces and fails planted bugs, naming the tensor; pieces train as
modules and optimizers; `deepcourse gradcheck` exits 0, 1 or 2 as documented."""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import lab_solutions as S
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from deepcourse import lab
from deepcourse.cli.main import main
from deepcourse.registry import OPTIMIZERS, PIECES


@pytest.fixture()
def register() -> Iterator[Any]:
    """Register pieces for one test; every one is removed afterwards (optimizers too)."""
    names: list[str] = []

    def add(kind: str, name: str, *functions: Any, reference: str, array: str = "numpy") -> lab.Piece:
        names.append(name)
        if kind == "layer":
            return lab.layer(name, *functions, reference=reference, array=array)
        if kind == "loss":
            return lab.loss(name, *functions, reference=reference, array=array)
        return lab.update_rule(name, *functions, reference=reference, array=array)

    yield add
    for name in names:
        PIECES.unregister(name)
        OPTIMIZERS.unregister(f"lab:{name}")


SOLVED = [(kind, ref) for kind, table in S.SOLUTIONS.items() for ref in table]


@pytest.mark.parametrize("kind, reference", SOLVED)
def test_correct_pieces_pass_every_case(register: Any, kind: str, reference: str) -> None:
    functions = S.SOLUTIONS[kind][reference]
    p = register(kind, f"t_{reference}", *(functions if isinstance(functions, tuple) else (functions,)),
                 reference=reference)
    report = lab.check(p)
    assert report.status == "ok", report.message
    cases = {r.case for r in report.rows}
    assert len(cases) >= 2  # several shapes, not one
    if kind == "layer":  # every gradient is checked both ways
        assert {r.against for r in report.rows if r.tensor == "dx"} == {"numeric", "torch"}


@pytest.mark.parametrize("kind, name, functions, reference, tensor", [
    ("layer", "affine", (S.affine_forward, S.affine_backward_missing_transpose), "affine", "dx"),
    ("layer", "batchnorm", (S.batchnorm_forward, S.batchnorm_backward_without_mean_term), "batchnorm", "dx"),
    ("layer", "conv", (S.conv_forward_off_by_one, S.conv_backward), "conv", "out"),
    ("update", "adam", (S.adam_without_bias_correction,), "adam", "w"),
])
def test_planted_bugs_fail_naming_the_tensor(register: Any, kind: str, name: str, functions: tuple[Any, ...],
                                             reference: str, tensor: str) -> None:
    report = lab.check(register(kind, f"bug_{name}", *functions, reference=reference))
    assert report.status == "fail"
    assert tensor in {r.tensor for r in report.failing}, report.failing
    assert report.message and "relative error" in report.message


def test_the_batchnorm_bug_is_seen_by_both_checks_and_the_forward_still_passes(register: Any) -> None:
    report = lab.check(register("layer", "bug_bn", S.batchnorm_forward, S.batchnorm_backward_without_mean_term,
                                reference="batchnorm"))
    failing = {(r.tensor, r.against) for r in report.failing}
    assert failing == {("dx", "numeric"), ("dx", "torch")}


def test_a_piece_in_torch_without_autograd_is_checked_the_same(register: Any) -> None:
    def forward(x: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        assert not torch.is_grad_enabled() and isinstance(x, torch.Tensor)
        return x.reshape(x.shape[0], -1) @ params["w"] + params["b"], (x, params["w"])

    def backward(dout: torch.Tensor, cache: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, w = cache
        return (dout @ w.T).reshape(x.shape), {"w": x.reshape(x.shape[0], -1).T @ dout, "b": dout.sum(0)}

    assert lab.check(register("layer", "torch_affine", forward, backward, reference="affine", array="torch")).status \
        == "ok"


def test_a_stub_is_not_written_and_a_crash_points_at_the_students_line(register: Any) -> None:
    def stub(x: Any, params: Any) -> Any:
        raise NotImplementedError

    report = lab.check(register("layer", "stub", stub, S.affine_backward, reference="affine"))
    assert report.status == "not written" and "forward is not written yet" in report.message

    def crash(x: Any, params: Any) -> Any:
        return x[:, 99], None  # an index past the end

    report = lab.check(register("layer", "crash", crash, S.affine_backward, reference="affine"))
    assert report.status == "fail" and "IndexError" in report.message and "test_lab.py:" in report.message


def test_contract_breaches_are_bad_pieces_naming_what_was_expected(register: Any) -> None:
    def one_argument(x: Any) -> Any:
        return x, None

    report = lab.check(register("layer", "badsig", one_argument, S.affine_backward, reference="affine"))
    assert report.status == "bad piece" and "forward(x, params)" in report.message and "badsig" in report.message

    def wrong_shape(dout: Any, cache: Any) -> Any:
        dx, grads = S.affine_backward(dout, cache)
        return dx[:, :1], grads

    report = lab.check(register("layer", "badshape", S.affine_forward, wrong_shape, reference="affine"))
    assert report.status == "bad piece" and "dx of shape" in report.message and "expected (4, 4)" in report.message

    def nan_backward(dout: Any, cache: Any) -> Any:
        dx, grads = S.affine_backward(dout, cache)
        grads["w"][0, 0] = np.nan
        return dx, grads

    report = lab.check(register("layer", "nanback", S.affine_forward, nan_backward, reference="affine"))
    assert report.status == "bad piece" and "NaN" in report.message and "dparams['w']" in report.message


def test_softmax_without_the_max_subtracted_overflows_on_large_scores(register: Any) -> None:
    def naive(scores: Any, y: Any) -> Any:
        e = np.exp(scores)
        p = e / e.sum(axis=1, keepdims=True)
        n = len(y)
        d = p.copy()
        d[np.arange(n), y] -= 1
        return -np.log(p[np.arange(n), y]).mean(), d / n

    with np.errstate(all="ignore"):
        report = lab.check(register("loss", "naive_softmax", naive, reference="softmax"))
    assert report.status == "bad piece" and "large scores" in report.message


def test_dropout_that_ignores_the_seed_fails_the_numeric_check(register: Any) -> None:
    def forward(x: Any, params: Any, config: Any) -> Any:
        if config["mode"] != "train":
            return x, None
        mask = (np.random.random(x.shape) >= config["p"]) / (1 - config["p"]) if config["p"] < 1 else 0 * x
        return x * mask, mask

    report = lab.check(register("layer", "unseeded", forward, S.dropout_backward, reference="dropout"))
    assert report.status == "fail" and ("dx", "numeric") in {(r.tensor, r.against) for r in report.failing}


def test_an_update_rule_that_keeps_no_state_is_named(register: Any) -> None:
    def forgetful(w: Any, dw: Any, config: Any) -> Any:
        return w - config["learning_rate"] * dw, {"learning_rate": config["learning_rate"],
                                                  "momentum": config["momentum"]}

    report = lab.check(register("update", "forgetful", forgetful, reference="sgd_momentum"))
    assert report.status == "bad piece" and "'velocity'" in report.message


# -- training with pieces -------------------------------------------------------------------------------------------
def test_a_lab_batchnorm_trains_like_torchs_in_float64(register: Any) -> None:
    register("layer", "bn", *S.SOLUTIONS["layer"]["batchnorm"], reference="batchnorm")
    mine = lab.lab_layer("lab:bn", features=5).double()
    theirs = nn.BatchNorm1d(5).double()
    x = torch.randn(8, 5, dtype=torch.float64)
    for layer in (mine, theirs):
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 1.5, 5)) if hasattr(layer, "weight") else None
    with torch.no_grad():
        mine.gamma.copy_(theirs.weight)
        mine.beta.copy_(theirs.bias)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = mine(xa), theirs(xb)
    torch.testing.assert_close(out_a, out_b)
    (out_a ** 2).sum().backward()
    (out_b ** 2).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(mine.gamma.grad, theirs.weight.grad)
    torch.testing.assert_close(mine.running_mean, theirs.running_mean)
    torch.testing.assert_close(mine.running_var, theirs.running_var)
    mine.eval(), theirs.eval()
    torch.testing.assert_close(mine(x), theirs(x))
    # feature maps: every pixel an example of C features, as BatchNorm2d
    maps = lab.lab_layer("bn", features=3).double()
    torch.testing.assert_close(maps(torch.ones(2, 3, 4, 4, dtype=torch.float64) * 2),
                               torch.zeros(2, 3, 4, 4, dtype=torch.float64))


def test_a_lab_update_rule_is_an_optimizer_that_saves_and_resumes_its_state(register: Any) -> None:
    register("update", "my_adam", S.adam, reference="adam")
    assert "lab:my_adam" in OPTIMIZERS

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(4, 3).double()

    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(3, (16,))

    def train(net: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

    ours, theirs = model(), model()
    opt = OPTIMIZERS.get("lab:my_adam")(ours.parameters(), lr=0.01)
    train(ours, opt, 3)
    ref = torch.optim.Adam(theirs.parameters(), lr=0.01)
    train(theirs, ref, 3)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b)
    # save after 3 steps, load into a fresh optimizer, 3 more: the same as 6 in one go
    # a state dict is live (as torch's are): copy it, as writing a checkpoint does
    saved, weights = copy.deepcopy(opt.state_dict()), {k: v.clone() for k, v in ours.state_dict().items()}
    train(ours, opt, 3)
    again = model()
    again.load_state_dict(weights)
    opt2 = OPTIMIZERS.get("lab:my_adam")(again.parameters(), lr=0.01)
    opt2.load_state_dict(saved)
    train(again, opt2, 3)
    for a, b in zip(ours.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_a_lab_loss_backpropagates_its_own_gradient(register: Any) -> None:
    register("loss", "sm", S.softmax_loss, reference="softmax")
    scores = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(4, (6,))
    lab.lab_loss("lab:sm")(scores, y).backward()
    expected = torch.autograd.grad(nn.functional.cross_entropy(scores, y), scores)[0]
    torch.testing.assert_close(scores.grad, expected)


def test_choice_takes_builtin_names_and_registered_pieces_of_the_right_kind(register: Any) -> None:
    from typing import Literal

    from pydantic import TypeAdapter, ValidationError

    register("layer", "bn2", *S.SOLUTIONS["layer"]["batchnorm"], reference="batchnorm")
    register("layer", "aff", *S.SOLUTIONS["layer"]["affine"], reference="affine")
    norm = TypeAdapter(lab.choice(Literal["batch", "none"], "layer", *lab.NORMS))
    assert norm.validate_python("batch") == "batch" and norm.validate_python("lab:bn2") == "lab:bn2"
    for bad, words in [("lab:nope", "unknown piece 'nope'"), ("lab:aff", "is a affine layer"),
                       ("group", "choose one of 'batch', 'none'")]:
        with pytest.raises(ValidationError, match=words):
            norm.validate_python(bad)


# -- the command ----------------------------------------------------------------------------------------------------
def test_gradcheck_exits_0_1_or_2_with_a_table(register: Any) -> None:
    register("layer", "good_affine", *S.SOLUTIONS["layer"]["affine"], reference="affine")
    register("update", "bad_adam", S.adam_without_bias_correction, reference="adam")
    runner = CliRunner()
    ok = runner.invoke(main, ["gradcheck", "good_affine"])
    assert ok.exit_code == 0, ok.output
    assert "good_affine (layer affine, numpy): ok" in ok.output and "dw" in ok.output and "numeric" in ok.output
    failed = runner.invoke(main, ["gradcheck", "lab:good_affine", "bad_adam"])
    assert failed.exit_code == 1 and "bad_adam (update adam, numpy): FAIL" in failed.output
    assert "1 ok, 1 fail (2 pieces)" in failed.output
    data = json.loads(runner.invoke(main, ["gradcheck", "bad_adam", "--json"]).output)
    assert data[0]["status"] == "fail" and any(not row["ok"] for row in data[0]["rows"])


def test_gradcheck_refuses_what_it_cannot_check(register: Any) -> None:
    def one_argument(x: Any) -> Any:
        return x, None

    register("layer", "sig", one_argument, S.affine_backward, reference="affine")
    runner = CliRunner()
    bad = runner.invoke(main, ["gradcheck", "sig"])
    assert bad.exit_code == 2 and "lab piece 'sig'" in bad.output and "forward(x, params)" in bad.output
    for args, words in [(["gradcheck"], "name the pieces to check, or --all"),
                        (["gradcheck", "nope"], "gradcheck: unknown piece 'nope'"),
                        (["gradcheck", "sig", "--all"], "not both")]:
        out = runner.invoke(main, args)
        assert out.exit_code == 2 and words in out.output and "Traceback" not in out.output, out.output


def test_unknown_references_are_refused_at_registration() -> None:
    with pytest.raises(ValueError, match="unknown reference 'batchnrom'.*batchnorm"):
        lab.layer("x", S.affine_forward, S.affine_backward, reference="batchnrom")
    assert "x" not in PIECES
