"""The three distributions as a user installs them from PyPI: wheels, no checkout, no editable install.

The wheels are built from this checkout and installed into a fresh folder, then the command line runs from another
folder with only that one on the path, so nothing can come from the checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    pytest.importorskip("deepcourse_vision")
    pytest.importorskip("deepcourse_sequence")
    wheels = tmp_path_factory.mktemp("wheels")
    # built from a copy of the tracked tree: setuptools writes build/ folders beside the sources it builds
    source = tmp_path_factory.mktemp("source") / "deepcourse"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "runs", "site",
                                                                 "__pycache__", ".pytest_cache"))
    for project in (source, source / "plugins" / "vision", source / "plugins" / "sequence"):
        out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                              "-w", str(wheels), str(project)], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
    built = sorted(wheels.glob("*.whl"))
    assert [w.name.split("-")[0] for w in built] == ["deepcourse", "deepcourse_sequence", "deepcourse_vision"]
    target = tmp_path_factory.mktemp("site")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          *map(str, built)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return target, built


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DEEPCOURSE_DATA"}
    env["PYTHONPATH"] = str(target)  # before site-packages, where the editable installs of the checkout live
    return subprocess.run([sys.executable, "-m", "deepcourse", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_wheels_carry_license_types_recipes_and_one_version(installed: tuple[Path, list[Path]]) -> None:
    import deepcourse

    _, built = installed
    for wheel in built:
        names = zipfile.ZipFile(wheel).namelist()
        package = wheel.name.split("-")[0]
        assert f"{package}/py.typed" in names, wheel.name
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), wheel.name
        meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert "License-Expression: MIT" in meta and f"Version: {deepcourse.__version__}" in meta, wheel.name
    core = zipfile.ZipFile(built[0]).namelist()
    assert {"deepcourse/recipes/quickstart.toml", "deepcourse/recipes/cifar_resnet.toml",
            "deepcourse/recipes/ablations/lenet_dropout.toml", "deepcourse/cli/templates/task/recipe.toml",
            "deepcourse/cli/templates/task/test_plugin.py.tmpl", "deepcourse/training/loop.py"} <= set(core)
    entry_points = zipfile.ZipFile(built[0]).read(next(n for n in core if n.endswith("entry_points.txt"))).decode()
    assert "deepcourse = deepcourse.builtins" in entry_points  # the core's own components, through the plugin door


def test_the_installed_packages_run_a_shipped_recipe_by_name(installed: tuple[Path, list[Path]],
                                                             tmp_path: Path) -> None:
    target, _ = installed
    where = run_installed(target, tmp_path, "recipes", "quick*")
    assert where.returncode == 0, where.stderr
    assert "quickstart" in where.stdout and str(target / "deepcourse" / "recipes") in where.stdout
    plugins = run_installed(target, tmp_path, "plugins")
    assert plugins.returncode == 0, plugins.stderr
    for name in ("vision", "sequence"):
        line = next(line for line in plugins.stdout.splitlines() if line.startswith(name))
        assert line.split()[1] == f"deepcourse-{name}" and "ok" in line.split(), line
    out = run_installed(target, tmp_path, "run", "quickstart", "--set", "train.epochs=1", "--set",
                        "train.progress=false", "--no-report", "--json")
    assert out.returncode == 0, out.stderr
    assert "epoch 1/1" in out.stdout and '"accuracy"' in out.stdout
    assert list((tmp_path / "runs" / "quickstart").glob("*/best/model.safetensors"))
    schema = run_installed(target, tmp_path, "schema")
    assert schema.returncode == 0, schema.stderr
    assert schema.stdout == (REPO / "recipe.schema.json").read_text(encoding="utf-8")
    origin = subprocess.run([sys.executable, "-c", "import deepcourse, deepcourse_vision; print(deepcourse.__file__);"
                             " print(deepcourse_vision.__file__)"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(target)})
    assert all(line.startswith(str(target)) for line in origin.stdout.split()), origin.stdout
