"""Print every floor of the three distributions pinned exactly (`torch==2.6`), one requirement a line, for the
minimum-versions environment (.ci/min_versions). The pins are read from the pyproject files themselves, so they
cannot drift from the floors users get. A requirement without a floor is printed as it is (its version then comes
from a pinned package that depends on it); the distributions' own `deepcourse` requirement is left out (the checkout
is installed). Requirements behind an extra are not included: the floors job proves the base installation.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = (ROOT, ROOT / "plugins" / "vision", ROOT / "plugins" / "sequence")
OWN = {"deepcourse", "deepcourse-vision", "deepcourse-sequence"}


def floor_pin(line: str) -> str:
    """`name>=X,...` -> `name==X` (the extras and markers kept); a requirement with no `>=` stays as written."""
    req = Requirement(line)
    floors = [spec.version for spec in req.specifier if spec.operator == ">="]
    if not floors:
        return str(req)
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{req.name}{extras}=={max(floors, key=Version)}{marker}"


def pins() -> list[str]:
    """One pin per distribution name (the highest floor where two projects name the same package)."""
    chosen: dict[str, tuple[str, str]] = {}
    for project in PROJECTS:
        data = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
        for line in data["project"]["dependencies"]:
            req = Requirement(line)
            name = req.name.lower().replace("_", "-")
            if name in OWN:
                continue
            pin = floor_pin(line)
            version = pin.partition("==")[2].partition(";")[0]
            if name not in chosen or _newer(version, chosen[name][0]):
                chosen[name] = (version, pin)
    return [pin for _, pin in sorted(chosen.values(), key=lambda v: Requirement(v[1]).name.lower())]


def _newer(a: str, b: str) -> bool:
    try:
        return Version(a) > Version(b)
    except InvalidVersion:
        return bool(a) and not b


if __name__ == "__main__":
    sys.stdout.write("".join(f"{pin}\n" for pin in pins()))
