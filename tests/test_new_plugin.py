"""`deepcourse new-plugin` makes a package that installs, and whose own test and recipe pass as generated."""
from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import lab_solutions
import pytest
from click.testing import CliRunner
from core_support import run_cli

from deepcourse.cli.main import main

#: the lab's stubs: module -> function -> the piece it belongs to
LAB_STUBS = {"layers": {"affine_forward": "affine", "affine_backward": "affine", "relu_forward": "relu",
                        "relu_backward": "relu", "batchnorm_forward": "batchnorm", "batchnorm_backward": "batchnorm",
                        "dropout_forward": "dropout", "dropout_backward": "dropout"},
             "losses": {"softmax_loss": "softmax"}, "optim": {"sgd_momentum": "sgd_momentum", "adam": "adam"}}


def install(root: Path, site: Path, env: dict[str, str]) -> dict[str, str]:
    """Install the generated package into a folder of its own; the environment that sees it on PYTHONPATH.

    Not into the environment: the tests running beside this one (pytest-xdist) must not see a plugin appear and
    vanish, and a killed run must leave nothing installed."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
           str(root)]
    installed = subprocess.run(pip, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    return {**env, "PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def generated_tests(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           str(root / "tests"), *args], capture_output=True, text=True, env=env, cwd=root.parent,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model", "dataset", "task"])
def test_generated_plugin_installs_and_passes_its_tests(tmp_path: Path, cli_env: dict[str, str], kind: str) -> None:
    pytest.importorskip("deepcourse_vision")  # the model and dataset examples build on the vision plugin
    name = f"gen{kind}"
    root = tmp_path / f"deepcourse-{name}"
    out = run_cli(["new-plugin", name, "--dir", str(root), "--kind", kind], cli_env)
    assert out.returncode == 0, out.stderr
    assert (root / "pyproject.toml").exists() and (root / f"src/deepcourse_{name}/__init__.py").exists()
    env = install(root, tmp_path / "site", cli_env)
    listed = run_cli(["plugins"], env)
    assert any(line.startswith(name) and "ok" in line for line in listed.stdout.splitlines()), listed.stdout
    tests = generated_tests(root, env)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    recipe = run_cli(["run", str(root / "recipes" / f"{name}.toml"), "--run-dir", str(tmp_path / "run"),
                      "--set", "train.max_steps=3", "--no-report"], env)
    assert recipe.returncode == 0, recipe.stderr


def test_new_plugin_refuses_bad_names_and_occupied_folders(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = run_cli(["new-plugin", "9lives", "--dir", str(tmp_path / "x")], cli_env)
    assert out.returncode == 2 and "starting with a letter" in out.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    out = run_cli(["new-plugin", "ok", "--dir", str(tmp_path / "busy")], cli_env)
    assert out.returncode == 2 and "already exists and is not empty" in out.stderr


@pytest.mark.parametrize("kind", ["model", "dataset", "task", "lab"])
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


def fill(module: Path, stub: str, solution: Callable[..., object]) -> None:
    """What a student does: replace the stub function `stub` of a generated module by a solution, renamed."""
    text = module.read_text(encoding="utf-8")
    node = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == stub)
    lines = text.splitlines(keepends=True)
    source = re.sub(rf"^def {solution.__name__}\(", f"def {stub}(", inspect.getsource(solution))
    module.write_text("".join(lines[:node.lineno - 1]) + source + "".join(lines[node.end_lineno:]), encoding="utf-8")


def test_lab_stubs_are_exercises_with_their_contract_not_answers(tmp_path: Path) -> None:
    """Every stub is a docstring naming its arguments, then `raise NotImplementedError`: nothing of a solution; and
    the seven pieces are registered under the plugin's name."""
    root = tmp_path / "pkg"
    out = CliRunner().invoke(main, ["new-plugin", "mylab", "--dir", str(root), "--kind", "lab"])
    assert out.exit_code == 0, out.output
    registered = {}
    for module, stubs in LAB_STUBS.items():
        tree = ast.parse((root / "src" / "deepcourse_mylab" / f"{module}.py").read_text(encoding="utf-8"))
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert set(functions) == set(stubs), module
        for fn in functions.values():
            doc = ast.get_docstring(fn) or ""
            assert all(a.arg in doc for a in fn.args.args), f"{fn.name}: its docstring must name every argument"
            docstring, body = fn.body[0], fn.body[1:]
            assert isinstance(docstring, ast.Expr) and len(body) == 1 and isinstance(body[0], ast.Raise), fn.name
            assert ast.unparse(body[0]) == "raise NotImplementedError", fn.name
        for call in (n.value for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)):
            registered[ast.literal_eval(call.args[0])] = ast.literal_eval(call.keywords[0].value)  # name, reference=
    assert registered == {f"mylab_{piece}": piece for piece in
                          ("affine", "relu", "batchnorm", "dropout", "softmax", "sgd_momentum", "adam")}
    layers = (root / "src" / "deepcourse_mylab" / "layers.py").read_text(encoding="utf-8")
    # the conventions that differ from CS231n's, since the checker compares with torch
    assert 'np.random.default_rng(config["seed"])' in layers and "DROPPING" in layers
    assert "NEW batch" in layers and "UNBIASED" in layers
    recipe = tomllib.loads((root / "recipes" / "mylab.toml").read_text(encoding="utf-8"))
    assert recipe["model"] == {"name": "mlp", "hidden": [100] * 4, "norm": "lab:mylab_batchnorm"}
    assert recipe["data"]["name"] == "cifar10" and recipe["requires_plugins"] == ["vision", "mylab"]


@pytest.mark.slow
def test_generated_lab_installs_and_checks_the_pieces_written(tmp_path: Path) -> None:
    """A student's path: generate the lab, write two pieces (affine, batch norm) and Adam, install; the written pieces
    pass the checker, the others are reported as not written, and the recipe trains with the student's layers."""
    pytest.importorskip("deepcourse_vision")  # the recipe's MLP and CIFAR-10
    # not cli_env: its toy lab's pieces break the contract on purpose, and `gradcheck --all` would report them
    clean = {k: v for k, v in os.environ.items() if k != "DEEPCOURSE_PLUGIN_ERRORS"} | {"PYTHONUNBUFFERED": "1"}
    root = tmp_path / "deepcourse-genlab"
    out = run_cli(["new-plugin", "genlab", "--dir", str(root), "--kind", "lab"], clean)
    assert out.returncode == 0, out.stderr
    package = root / "src" / "deepcourse_genlab"
    fill(package / "layers.py", "affine_forward", lab_solutions.affine_forward)
    fill(package / "layers.py", "affine_backward", lab_solutions.affine_backward)
    fill(package / "layers.py", "batchnorm_forward", lab_solutions.batchnorm_forward)
    fill(package / "layers.py", "batchnorm_backward", lab_solutions.batchnorm_backward)
    fill(package / "optim.py", "adam", lab_solutions.adam)
    env = install(root, tmp_path / "site", clean)

    listed = run_cli(["plugins"], env)
    assert any(line.startswith("genlab") and "ok" in line for line in listed.stdout.splitlines()), listed.stdout
    pieces = run_cli(["list", "pieces", "genlab_*"], env)
    assert pieces.returncode == 0, pieces.stderr
    shown = {line.split()[0]: line for line in pieces.stdout.splitlines()[1:]}
    expected = {f"genlab_{p}" for p in ("affine", "relu", "batchnorm", "dropout", "softmax", "sgd_momentum", "adam")}
    assert set(shown) == expected and all("[genlab]" in line for line in shown.values()), pieces.stdout

    written = generated_tests(root, env, "-k", "affine or batchnorm or adam")
    assert written.returncode == 0 and "3 passed" in written.stdout, written.stdout + written.stderr
    unwritten = generated_tests(root, env, "-k", "dropout")
    assert unwritten.returncode == 1 and "genlab_dropout: not written" in unwritten.stdout, unwritten.stdout

    checked = run_cli(["gradcheck", "genlab_affine", "genlab_batchnorm", "genlab_adam"], env)
    assert checked.returncode == 0 and "3 ok (3 pieces)" in checked.stdout, checked.stdout + checked.stderr
    every = run_cli(["gradcheck", "--all"], env)
    assert every.returncode == 1 and "3 ok, 4 not written (7 pieces)" in every.stdout, every.stdout + every.stderr
    assert any(line.startswith("genlab_dropout") and line.endswith("not written")
               for line in every.stdout.splitlines()), every.stdout

    # the lab's recipe trains with the student's batch norm, affine layers and Adam (a few steps: the path, not a
    # result; docs/labs.md has the full run)
    if not (Path(env.get("DEEPCOURSE_DATA", "")) / "cifar10").is_dir():
        pytest.skip("the lab's recipe trains on CIFAR-10: set DEEPCOURSE_DATA to the shared data")
    run = run_cli(["run", str(root / "recipes" / "genlab.toml"), "--run-dir", str(tmp_path / "run"), "--no-report",
                   "--set", "train.max_steps=3", "--set", "model.linear='lab:genlab_affine'",
                   "--set", "optimizer.name='lab:genlab_adam'"], env)
    assert run.returncode == 0, run.stderr
    saved = (tmp_path / "run" / "recipe.toml").read_text(encoding="utf-8")
    assert "lab:genlab_batchnorm" in saved and "lab:genlab_affine" in saved
