"""`deepcourse new-plugin` makes a package that installs, and whose own test and recipe pass as generated."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from core_support import run_cli

from deepcourse.cli.main import main


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model", "dataset", "task"])
def test_generated_plugin_installs_and_passes_its_tests(tmp_path: Path, cli_env, kind: str) -> None:
    pytest.importorskip("deepcourse_vision")  # the model and dataset examples build on the vision plugin
    name = f"gen{kind}"
    root = tmp_path / f"deepcourse-{name}"
    out = run_cli(["new-plugin", name, "--dir", str(root), "--kind", kind], cli_env)
    assert out.returncode == 0, out.stderr
    assert (root / "pyproject.toml").exists() and (root / f"src/deepcourse_{name}/__init__.py").exists()
    # installed into a folder of its own on PYTHONPATH, not into the environment: the tests running beside this one
    # (pytest-xdist) must not see a plugin appear and vanish, and a killed run must leave nothing installed
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
           str(root)]
    installed = subprocess.run(pip, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    env = {**cli_env, "PYTHONPATH": os.pathsep.join([str(site), cli_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    listed = run_cli(["plugins"], env)
    assert any(line.startswith(name) and "ok" in line for line in listed.stdout.splitlines()), listed.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                            str(root / "tests")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    recipe = run_cli(["run", str(root / "recipes" / f"{name}.toml"), "--run-dir", str(tmp_path / "run"),
                      "--set", "train.max_steps=3", "--no-report"], env)
    assert recipe.returncode == 0, recipe.stderr


def test_new_plugin_refuses_bad_names_and_occupied_folders(tmp_path: Path, cli_env) -> None:
    out = run_cli(["new-plugin", "9lives", "--dir", str(tmp_path / "x")], cli_env)
    assert out.returncode == 2 and "starting with a letter" in out.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    out = run_cli(["new-plugin", "ok", "--dir", str(tmp_path / "busy")], cli_env)
    assert out.returncode == 2 and "already exists and is not empty" in out.stderr


@pytest.mark.parametrize("kind", ["model", "dataset", "task"])
@pytest.mark.parametrize("name, ident", [("class", "class"), ("My-CNN", "my_cnn")])
def test_names_python_would_refuse_elsewhere_still_generate_valid_code(tmp_path: Path, kind: str, name: str,
                                                                       ident: str) -> None:
    """A keyword ('class') or a mixed-case dashed name is a fine plugin name: every generated file parses."""
    root = tmp_path / "pkg"
    out = CliRunner().invoke(main, ["new-plugin", name, "--dir", str(root), "--kind", kind])
    assert out.exit_code == 0, out.output
    for path in root.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path))
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["deepcourse.plugins"] == {ident: f"deepcourse_{ident}"}
    assert (root / "src" / f"deepcourse_{ident}" / "__init__.py").is_file()
