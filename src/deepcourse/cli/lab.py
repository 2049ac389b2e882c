"""`deepcourse gradcheck`: check hand-written lab pieces against numerical gradients and torch's own.

Exit status: 0 when every piece passes, 1 when one fails or is not written yet (the failing tensor named), 2 when a
piece breaks its contract (signature, shapes, NaN) or a name is unknown. `deepcourse.cli.main` adds the command.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from deepcourse.cli.common import handle_errors
from deepcourse.errors import UserError

if TYPE_CHECKING:
    from deepcourse.lab import Report, Row

#: how each status is shown, and its exit status
STATUS = {"ok": ("ok", "green", 0), "fail": ("FAIL", "red", 1), "not written": ("not written", "yellow", 1),
          "bad piece": ("BAD PIECE", "red", 2)}


@click.command()
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Check every registered lab piece.")
@click.option("-v", "--verbose", is_flag=True, help="One row per case and tensor (default: the worst case of each).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print every row as JSON.")
@handle_errors
def gradcheck(names: Sequence[str], every: bool, verbose: bool, seed: int, as_json: bool) -> None:
    """Check lab pieces NAMES (or --all): each gradient against centered differences and torch's own, each forward
    and update against torch's layer, loss or optimizer, in float64, on several shapes and the edge cases."""
    from deepcourse.lab import PIECES, check, piece

    if every and names:
        raise UserError("gradcheck: give piece NAMES or --all, not both")
    if not every and not names:
        known = ", ".join(PIECES.names()) or "none are registered"
        raise UserError(f"gradcheck: name the pieces to check, or --all (registered: {known})")
    if every and not PIECES.names():
        raise UserError("gradcheck --all: no lab pieces are registered; write a lab with `deepcourse new-plugin NAME "
                        "--kind lab` and `pip install -e` it (`deepcourse plugins` lists what is installed)")
    pieces = [PIECES.get(n) for n in PIECES.names()] if every else [piece(n, key="gradcheck") for n in names]
    reports = []
    for p in pieces:
        report = check(p, seed=seed)
        reports.append(report)
        if not as_json:
            _show(report, verbose)
    if as_json:
        click.echo(json.dumps([{"piece": r.piece.name, "kind": r.piece.kind, "reference": r.piece.reference_name,
                                "status": r.status, "message": r.message,
                                "rows": [{"case": x.case, "tensor": x.tensor, "against": x.against, "error": x.error,
                                          "tolerance": x.tol, "ok": x.ok} for x in r.rows]} for r in reports],
                               indent=2))
    counts = {s: sum(r.status == s for r in reports) for s in STATUS}
    if not as_json:
        click.echo(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" ({len(reports)} pieces)")
    for r in reports:
        if r.status == "bad piece":
            click.echo(f"deepcourse: error: {r.message}", err=True)
    code = max((STATUS[r.status][2] for r in reports), default=0)
    if code:
        sys.exit(code)


def _show(report: Report, verbose: bool) -> None:
    p = report.piece
    label, colour, _ = STATUS[report.status]
    click.echo(f"{click.style(p.name, bold=True)} ({p.kind} {p.reference_name}, {p.array}): "
               f"{click.style(label, fg=colour)}")
    rows = report.rows if verbose else _worst(report)
    if rows:
        width = max(len(r.case) for r in rows)
        click.echo(f"  {'case'.ljust(width)}  {'tensor':<24} {'against':<12} {'rel. error':>10}  {'tolerance':>9}")
        for r in rows:
            mark = click.style("ok", fg="green") if r.ok else click.style("FAIL", fg="red")
            click.echo(f"  {r.case.ljust(width)}  {r.tensor:<24} {r.against:<12} {r.error:>10.2e}  {r.tol:>9.0e}  "
                       f"{mark}")
    if report.message and report.status != "bad piece":
        click.echo(f"  {report.message}")


def _worst(report: Report) -> list[Row]:
    """One row per (tensor, against): the case with the largest error relative to its tolerance."""
    worst: dict[tuple[str, str], Row] = {}
    for r in report.rows:
        key = (r.tensor, r.against)
        if key not in worst or r.error / r.tol > worst[key].error / worst[key].tol:
            worst[key] = r
    return list(worst.values())
