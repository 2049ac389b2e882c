"""The conventions a Python command-line tool is expected to keep: `logging` levels set by -q/-v, NO_COLOR, shell
completion (recipe names included), a recipe JSON Schema for editors, `deepcourse plugins` that tries each plugin's
heavy dependencies, and dependency floors that the minimum-versions CI job can install exactly."""
from __future__ import annotations

import json
import logging
import os
import runpy
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from core_support import REPO, make_distribution, run_cli

from deepcourse.cli.main import main


# -- logging: one `deepcourse` logger, its level from -q / -v ---------------------------------------------------------
@pytest.mark.parametrize(("flags", "level"), [([], logging.INFO), (["-q"], logging.WARNING),
                                              (["--verbose"], logging.DEBUG)])
def test_quiet_and_verbose_set_the_deepcourse_logger(flags: list[str], level: int) -> None:
    result = CliRunner().invoke(main, [*flags, "recipes", "quick*"])
    assert result.exit_code == 0, result.output
    logger = logging.getLogger("deepcourse")
    assert logger.level == level
    assert logging.getLogger("deepcourse.training.loop").getEffectiveLevel() == level  # the loop's epoch lines


def test_quiet_hides_info_lines_but_not_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    from deepcourse.cli.common import configure_output, set_verbosity

    try:
        set_verbosity(-1)
        configure_output()
        logging.getLogger("deepcourse.training.loop").info("epoch 1/1 ...")
        logging.getLogger("deepcourse.training.loop").warning("something to know")
    finally:
        set_verbosity(0)
        configure_output()
    out, err = capsys.readouterr()
    assert "epoch" not in out + err and "deepcourse: warning: something to know" in err


# -- NO_COLOR ----------------------------------------------------------------------------------------------------------
def test_no_color_turns_the_colours_off() -> None:
    runner = CliRunner()
    coloured = runner.invoke(main, ["list", "optimizers"], color=True, env={"NO_COLOR": ""})
    assert coloured.exit_code == 0 and "\x1b[" in coloured.output  # an empty NO_COLOR is not set (no-color.org)
    plain = runner.invoke(main, ["list", "optimizers"], color=True, env={"NO_COLOR": "1"})
    assert plain.exit_code == 0 and "\x1b[" not in plain.output and "sgd" in plain.output


# -- shell completion ------------------------------------------------------------------------------------------------
def complete(words: str) -> list[str]:
    """What bash is offered for the last word of `words`, from the current folder (click's bash_complete protocol:
    `type,value` lines)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {"_DEEPCOURSE_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    result = CliRunner().invoke(main, [], env=env, prog_name="deepcourse")
    assert result.exit_code == 0, result.output
    return [line.split(",", 1)[1] for line in result.output.splitlines() if line.startswith("plain,")]


def test_completion_offers_commands_and_shipped_recipe_names() -> None:
    assert {"run", "check", "schema"} <= set(complete("deepcourse "))
    assert "quickstart" in complete("deepcourse run quick")
    assert "ablations/lenet_dropout" in complete("deepcourse check ablations/lenet_d")


def test_completion_offers_toml_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "deep.toml").write_text("")
    here = Path.cwd()
    try:
        os.chdir(tmp_path)
        offered = complete("deepcourse run ")
        inside = complete("deepcourse run more/")
    finally:
        os.chdir(here)
    assert {"mine.toml", "more/", "quickstart"} <= set(offered) and "notes.txt" not in offered
    assert inside == ["more/deep.toml"]


def test_the_bash_completion_script_is_generated() -> None:
    result = CliRunner().invoke(main, [], env={"_DEEPCOURSE_COMPLETE": "bash_source"}, prog_name="deepcourse")
    assert result.exit_code == 0 and "_deepcourse_completion" in result.output


# -- the recipe JSON Schema ------------------------------------------------------------------------------------------
def test_schema_command_prints_the_committed_recipe_schema() -> None:
    """recipe.schema.json (what editors read) is what `deepcourse schema` prints: regenerate it with
    `deepcourse schema > recipe.schema.json` after changing recipe/schema.py."""
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    assert result.output == (REPO / "recipe.schema.json").read_text(encoding="utf-8")
    schema = json.loads(result.output)
    assert schema["$schema"].startswith("https://json-schema.org/") and "train" in schema["properties"]


def test_schema_accepts_every_shipped_recipe_and_refuses_bad_ones() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads((REPO / "recipe.schema.json").read_text()))
    for path in sorted((REPO / "recipes").rglob("*.toml")):  # partial files (`extends`) included
        assert not list(validator.iter_errors(tomllib.loads(path.read_text()))), path
    for bad in ("bad_tracker.toml", "base_with_typo.toml", "base_wrong_type.toml"):
        assert list(validator.iter_errors(tomllib.loads((REPO / "tests" / "bad_inputs" / bad).read_text()))), bad


def test_schema_components_lists_the_registered_names() -> None:
    result = CliRunner().invoke(main, ["schema", "--components"])
    assert result.exit_code == 0, result.output
    name = json.loads(result.output)["$defs"]["OptimizerSection"]["properties"]["name"]
    assert {"sgd", "adamw"} <= set(name["examples"])


# -- deepcourse plugins imports each plugin's heavy dependencies -----------------------------------------------------
def test_a_plugin_whose_heavy_dependency_is_broken_is_reported_broken(tmp_path: Path) -> None:
    """A broken torchvision (here: one that fails to import, first on the path) makes the vision plugin 'error', by
    name, though the plugin itself imports torchvision only when a model is built; so does a toy plugin's own."""
    pytest.importorskip("deepcourse_vision")
    site = tmp_path / "site"
    (site / "torchvision").mkdir(parents=True)
    (site / "torchvision" / "__init__.py").write_text("raise ImportError('libc10.so: cannot open shared object')\n")
    make_distribution(site, "deepcourse-heavy", {"heavy": "heavy_plugin"},
                      {"heavy_plugin": "HEAVY_MODULES = ('json', 'no_such_heavy_module')\n"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "NO_COLOR": "1"}
    env.pop("DEEPCOURSE_PLUGIN_ERRORS", None)
    out = run_cli(["plugins"], env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    vision = lines.index(next(line for line in lines if line.startswith("vision")))
    assert lines[vision].split()[3] == "error" and "'torchvision'" in lines[vision + 1], out.stdout
    assert "libc10.so" in lines[vision + 1]
    heavy = next(line for line in lines if line.startswith("heavy"))
    assert heavy.split()[3] == "error" and "no_such_heavy_module" in out.stdout
    sequence = next(line for line in lines if line.startswith("sequence"))
    assert sequence.split()[3] == "ok"  # seqeval imports: its plugin stays ok


# -- dependency floors -----------------------------------------------------------------------------------------------
def project(path: str) -> dict:
    return tomllib.loads((REPO / path / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_every_dependency_has_a_floor_the_minimum_versions_job_pins() -> None:
    from packaging.requirements import Requirement

    pins = runpy.run_path(str(REPO / ".ci" / "min_pins.py"))["pins"]()
    pinned = {Requirement(p).name: Requirement(p) for p in pins}
    for path in (".", "plugins/vision", "plugins/sequence"):
        for line in project(path)["dependencies"]:
            req = Requirement(line)
            if req.name.startswith("deepcourse") or req.name == "pydantic-core":  # pydantic pins its core exactly
                continue
            assert any(s.operator == ">=" for s in req.specifier), f"{path}: {line} has no floor"
            assert str(pinned[req.name].specifier).startswith("=="), pinned[req.name]
    assert str(pinned["accelerate"].specifier) == "==1.9" and str(pinned["pillow"].specifier) == "==10.3"


def test_floors_admit_no_known_cve_and_no_dropped_package() -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    def floor(path: str, name: str) -> Version:
        req = next(Requirement(r) for r in project(path)["dependencies"] if Requirement(r).name == name)
        return min(Version(s.version) for s in req.specifier if s.operator == ">=")

    assert floor(".", "tqdm") >= Version("4.66.3")  # CVE-2024-34062
    assert floor(".", "filelock") >= Version("3.20.3") and floor("plugins/vision", "filelock") >= Version("3.20.3")
    assert floor("plugins/vision", "pillow") >= Version("10.3")  # CVE-2023-50447, CVE-2024-28219
    optuna = next(Requirement(r) for r in project(".")["dependencies"] if r.startswith("optuna"))
    assert any(s.operator == "<" for s in optuna.specifier)  # its private attributes are read: bounded
    assert not any(r.startswith("pytorch-crf") for r in project("plugins/sequence")["dependencies"])
    extras = project(".")["optional-dependencies"]
    assert any(Requirement(r).name == "mlflow" for r in extras["mlflow"])  # the full mlflow: `mlflow ui` starts
    assert any(Requirement(r).name == "sqlalchemy" and "2.1" in str(Requirement(r).specifier)
               for r in extras["postgresql"])


def test_docs_install_from_the_checkout_not_from_names_nobody_published() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted(REPO.glob("plugins/*/README.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "pip install deepcourse" not in text and "pip install 'deepcourse[" not in text, page
        assert "pip install deepcourse-" not in text, page
