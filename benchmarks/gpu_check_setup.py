"""Setting up the GPU check on a machine without network (benchmarks/gpu_check.py uses this before it imports
deepcourse).

Here, with network, `--prepare` fills one folder (.gpu_data/, git-ignored) with what the GPU machine lacks: one
CIFAR-10 training shard, the project's own two wheels (built from this checkout) and, with `--wheels-python`, the
wheels of the few requirements that `deepcourse run` of an image recipe imports and that an image with PyTorch
usually lacks (CARRIED). There, `install` uses the installed packages when deepcourse and its vision plugin import,
and otherwise installs from that folder only: `pip install --no-index --find-links WHEELS deepcourse deepcourse-vision`,
which keeps every installed package that satisfies a requirement. Where the folder lacks a requirement that the check
never imports (optuna for studies, captum for explanations), pip cannot resolve; the carried wheels are then
installed without resolving (skipping those already installed), and the report lists what is missing.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARD = "train-00000-of-00002.parquet"
PROJECT = ("deepcourse", "deepcourse-vision")
#: what `deepcourse run` of an image recipe imports beyond an image with PyTorch, torchvision, accelerate, numpy,
#: pyarrow, pillow, click, tqdm, safetensors and huggingface-hub: pydantic (recipes) and its parts, tomli-w, and
#: datasets with its own (it reads the Parquet shard the first time, before deepcourse caches the decoded images)
CARRIED = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "tomli-w", "datasets", "dill",
           "multiprocess", "xxhash")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def source_fingerprint() -> str:
    """A hash of the checkout's Python sources (core and vision plugin): tells a wheel built from another state."""
    digest = hashlib.sha256()
    for root in (REPO / "src" / "deepcourse", REPO / "plugins" / "vision" / "src" / "deepcourse_vision"):
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def prepare(target: Path, wheels_python: str | None) -> None:
    """Fill `target` here: the shard, the project's wheels, and (with a Python version) the CARRIED wheels."""
    source = Path(os.environ.get("DEEPCOURSE_DATA", REPO.parent / "shared" / "data")) / "cifar10" / SHARD
    if not source.is_file():
        raise SystemExit(f"{source}: not found; set DEEPCOURSE_DATA to the folder holding cifar10/")
    (target / "cifar10").mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target / "cifar10" / SHARD)
    print(f"copied {source} ({source.stat().st_size / 1e6:.0f} MB) to {target / 'cifar10'}")
    wheels = target / "wheels"
    wheels.mkdir(exist_ok=True)
    for old in wheels.glob("deepcourse*.whl"):
        old.unlink()
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO), str(REPO / "plugins" / "vision"))
    (wheels / "SOURCE").write_text(source_fingerprint() + "\n", encoding="utf-8")
    if wheels_python:
        pinned = [f"{name}=={md.version(name)}" for name in CARRIED]  # the versions the test suite runs with
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        pip("download", "--no-deps", "--only-binary=:all:", "--python-version", wheels_python, "--implementation",
            "cp", *platforms, "-d", str(wheels), *pinned)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"{target}: {size / 2**20:.1f} MiB to carry ({len(list(wheels.glob('*.whl')))} wheels in {wheels})")


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"pip {args[0]} failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return out


def importable() -> str | None:
    """None when deepcourse and its vision plugin import here; else why not."""
    try:
        importlib.invalidate_caches()
        import deepcourse  # noqa: F401 - the check itself
        import deepcourse_vision  # noqa: F401 - the image task and cifar10
    except ImportError as exc:
        for name in [m for m in sys.modules if m.split(".")[0] in ("deepcourse", "deepcourse_vision")]:
            del sys.modules[name]  # half-imported: imported afresh once installed
        return f"{type(exc).__name__}: {exc}"
    return None


def install(wheels: Path | None) -> dict[str, Any]:
    """The packages the check runs with: the installed ones when they import, else pip from `wheels` alone."""
    started = time.perf_counter()
    missing = importable()
    if missing is None:
        record: dict[str, Any] = {"how": "the installed packages"}
    elif wheels is None or not wheels.is_dir():
        raise SystemExit(f"deepcourse cannot be imported here ({missing}), and there is no folder of wheels to "
                         f"install it from: run `python benchmarks/gpu_check.py --prepare --wheels-python X.Y` on a "
                         f"machine with network and carry .gpu_data/, or pass --wheels DIR")
    else:
        record = install_from(wheels)
        record["before"] = missing
        still = importable()
        if still is not None:
            raise SystemExit(f"installed from {wheels}, but deepcourse still does not import: {still}\n"
                             f"{record.get('pip_check', '')}")
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["unmet_requirements"] = unmet(PROJECT)
    import deepcourse

    record["deepcourse"] = f"{deepcourse.__version__} ({Path(deepcourse.__file__).parent})"
    stamp = wheels / "SOURCE" if wheels is not None else None
    if record["how"] != "the installed packages" and stamp is not None and stamp.is_file() \
            and stamp.read_text().strip() != source_fingerprint():
        record["stale"] = "the deepcourse wheels were built from other sources than this checkout's (--prepare again)"
    return record


def install_from(wheels: Path) -> dict[str, Any]:
    """pip from the folder only: resolved (installed packages kept), else the carried wheels without resolving."""
    base = ["install", "--no-index", "--find-links", str(wheels), "--no-cache-dir", "--disable-pip-version-check"]
    resolved = subprocess.run([sys.executable, "-m", "pip", *base, *PROJECT], capture_output=True, text=True)
    record: dict[str, Any] = {"how": f"pip install --no-index --find-links {wheels} {' '.join(PROJECT)}"}
    if resolved.returncode:
        # a requirement the folder lacks: install what it has, except the distributions already here
        files = [str(w) for w in sorted(wheels.glob("*.whl")) if not installed(w.name.split("-")[0])
                 or w.name.split("-")[0].replace("_", "-") in PROJECT]
        pip(*base, "--no-deps", *files)
        record["how"] = f"pip install --no-index --no-deps (the folder lacked a requirement): {len(files)} wheels"
        record["resolver"] = resolved.stderr.strip().splitlines()[-1:] if resolved.stderr.strip() else []
    checked = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    record["pip_check"] = checked.stdout.strip()[-2000:]
    return record


def installed(name: str) -> bool:
    try:
        md.version(name.replace("_", "-"))
    except md.PackageNotFoundError:
        return False
    return True


def unmet(dists: tuple[str, ...]) -> list[str]:
    """Requirements of `dists` (without extras) that are not installed: what a run that needs them would lack."""
    from packaging.requirements import Requirement

    missing = []
    for dist in dists:
        try:
            requirements = md.requires(dist) or []
        except md.PackageNotFoundError:  # imported from a source folder (PYTHONPATH), not installed
            continue
        for text in requirements:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                ok = req.specifier.contains(md.version(req.name), prereleases=True)
            except md.PackageNotFoundError:
                ok = False
            if not ok:
                missing.append(f"{req} ({dist})")
    return missing
