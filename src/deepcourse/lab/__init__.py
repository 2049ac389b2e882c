"""The from-scratch labs: register a layer, a loss or an update rule written by hand, check its gradients against
torch's own, and train it in the same loop as the built-in pieces.

    from deepcourse import lab

    def affine_forward(x, params): ...       # -> out, cache
    def affine_backward(dout, cache): ...    # -> dx, {"w": dw, "b": db}
    lab.layer("my_affine", affine_forward, affine_backward, reference="affine")

Then `deepcourse gradcheck my_affine` (or `lab.check`), and a recipe trains with it where the built-in one would go:
`model.linear = "lab:my_affine"`, `model.norm = "lab:my_batchnorm"`, `optimizer.name = "lab:my_adam"`.

Modules: `register` (what a student calls), `pieces` (a registered piece, finding one), `references` (what each
piece is checked against, and its cases), `check` (the checker), `modules` (pieces as autograd functions and
`nn.Module`s), `optimizer` (an update rule as a torch optimizer), `convert` (numpy and torch arrays).
"""
from deepcourse.lab.check import NUMERIC_TOL, REFERENCE_TOL, Report, Row, check, rel_error
from deepcourse.lab.modules import LabLayer, lab_layer, lab_loss
from deepcourse.lab.optimizer import LabOptimizer
from deepcourse.lab.pieces import PREFIX, Piece, PieceError, choice, piece
from deepcourse.lab.references import LAYERS, LOSSES, NORMS, UPDATES
from deepcourse.lab.register import layer, loss, update_rule
from deepcourse.registry import PIECES

__all__ = ["layer", "loss", "update_rule", "piece", "choice", "check", "Report", "Row", "rel_error", "Piece",
           "PieceError", "PIECES", "PREFIX", "LabLayer", "LabOptimizer", "lab_layer", "lab_loss", "LAYERS", "LOSSES",
           "UPDATES", "NORMS", "NUMERIC_TOL", "REFERENCE_TOL"]
