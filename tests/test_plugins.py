"""Entry-point discovery with real (throwaway) distributions, including broken ones."""
from __future__ import annotations

import pytest
from core_support import make_distribution, run_cli

from deepcourse import discovery as plugins
from deepcourse.errors import UserError
from deepcourse.registry import DATASETS, MODELS, OPTIMIZERS, TASKS


def _info(name: str) -> plugins.PluginInfo:
    return {p.name: p for p in plugins.plugins()}[name]


def test_good_plugin_registers_through_entry_point(plugin_site) -> None:
    info = _info("toy")
    assert info.status == "ok" and info.dist == "deepcourse-toy" and info.version == "0.1.0"
    assert ("models", "toy_mlp") in info.components
    assert "toy-classification" in TASKS and "toy_blobs" in DATASETS


def test_import_error_is_reported_by_name_and_others_keep_working(plugin_site) -> None:
    info = _info("broken")
    assert info.status == "error"
    assert "RuntimeError: this plugin is broken on purpose" in info.error
    assert "broken_plugin" in info.details  # the traceback is kept for `deepcourse plugins -v`
    assert "toy_mlp" in MODELS


def test_conflicting_plugin_is_rolled_back(plugin_site) -> None:
    info = _info("greedy")
    assert info.status == "error"
    assert "optimizer 'sgd' from plugin greedy (greedy_plugin) is already registered by deepcourse " \
        "(deepcourse.optim)" in info.error
    assert "greedy_data" not in DATASETS  # what it registered before failing is gone
    assert OPTIMIZERS.entry("sgd").origin == "deepcourse"


def test_incompatible_version_is_not_loaded(plugin_site) -> None:
    info = _info("future")
    assert info.status == "incompatible"
    assert "needs deepcourse>=99" in info.error
    assert "future_net" not in MODELS


def test_requires_plugins_messages(plugin_site) -> None:
    plugins.require(["toy"])
    plugins.require(["deepcourse-toy"])
    with pytest.raises(UserError) as info:
        plugins.require(["toy", "vison_missing", "broken"])
    text = info.value.render()
    assert "requires_plugins[1]: plugin 'vison_missing' is not installed" in text
    assert "requires_plugins[2]: plugin 'broken' is installed but error" in text


def test_raise_mode_reraises(tmp_path, monkeypatch) -> None:
    import sys

    make_distribution(tmp_path, "explode", {"explode": "explode_mod"}, {"explode_mod": "1/0\n"})
    sys.path.insert(0, str(tmp_path))
    monkeypatch.setenv("DEEPCOURSE_PLUGIN_ERRORS", "raise")
    try:
        with pytest.raises(ZeroDivisionError):
            plugins.refresh()
    finally:
        sys.path.remove(str(tmp_path))
        monkeypatch.delenv("DEEPCOURSE_PLUGIN_ERRORS")


def test_cli_plugins_and_list_survive_broken_plugins(cli_env) -> None:
    out = run_cli(["plugins"], cli_env)
    assert out.returncode == 0, out.stderr
    for name, status in (("toy", "ok"), ("broken", "error"), ("greedy", "error"), ("future", "incompatible"),
                         ("badsig", "error")):
        line = next(row for row in out.stdout.splitlines() if row.startswith(name))
        assert status in line
    assert "this plugin is broken on purpose" in out.stdout
    assert "model 'needs_positional' from plugin badsig (badsig_plugin) cannot be built from a recipe" in out.stdout
    assert "warning: plugin 'broken'" in out.stderr
    listing = run_cli(["list", "models", "toy*"], cli_env)
    assert listing.returncode == 0
    assert "toy_mlp" in listing.stdout and "[toy]" in listing.stdout
    assert "Traceback" not in listing.stderr


def test_cli_help_does_not_load_plugins(cli_env) -> None:
    out = run_cli(["--help"], cli_env)
    assert out.returncode == 0
    assert "warning" not in out.stderr  # discovery is lazy: a broken plugin cannot slow or break --help


ISOLATION_PROBE = """
import json, sys
from click.testing import CliRunner
from deepcourse.testing import cli
out = {}
for key, args in (("plugins", ["plugins", "-v"]), ("models", ["list", "models", "lenet5"]),
                  ("datasets", ["list", "datasets", "mnist"]),
                  ("quickstart", ["run", "quickstart", "--run-dir", sys.argv[1], "--no-report", "--set",
                                  "train.max_steps=2", "--set", "train.progress=false"])):
    result = CliRunner().invoke(cli, args)
    out[key] = {"code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}
print(json.dumps(out))
"""


def _vision_plugin_line(lines: list[str]) -> tuple[str, list[str]]:
    i = next(i for i, line in enumerate(lines) if line.startswith("vision "))
    own = []
    for line in lines[i + 1:]:
        if not line.startswith("    ") or line.strip().startswith(("Traceback", "File")):
            break
        own.append(line.strip())
    return lines[i], own


# loaded before vision (the reported case), and after it
@pytest.mark.parametrize("name", ["aardvark", pytest.param("zebra", marks=pytest.mark.slow)])
def test_a_generated_dataset_plugin_building_on_vision_that_fails_leaves_vision_whole(
        tmp_path, cli_env, name: str) -> None:
    """The package `deepcourse new-plugin NAME --kind dataset` writes imports deepcourse_vision; made to raise after
    that, it is reported and rolled back alone: vision stays ok with every one of its components, `list` still
    credits lenet5 and mnist to vision, and the quickstart still runs."""
    import json
    import subprocess
    import sys

    pytest.importorskip("deepcourse_vision")
    from click.testing import CliRunner

    from deepcourse.cli.main import main

    package = tmp_path / "pkg"
    assert CliRunner().invoke(main, ["new-plugin", name, "--dir", str(package), "--kind", "dataset"]).exit_code == 0
    module = package / "src" / f"deepcourse_{name}" / "__init__.py"
    assert "from deepcourse_vision" in module.read_text()
    module.write_text(module.read_text() + "\nraise RuntimeError('broken after importing vision, on purpose')\n")
    site = tmp_path / "site"
    make_distribution(site, f"deepcourse-{name}", {name: f"deepcourse_{name}"}, {})
    (site / f"deepcourse_{name}-0.1.0.dist-info" / "top_level.txt").write_text(f"deepcourse_{name}\n")

    def probe(env: dict[str, str], label: str) -> dict:
        out = subprocess.run([sys.executable, "-c", ISOLATION_PROBE, str(tmp_path / f"run-{label}")], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    broken_env = {**cli_env, "PYTHONPATH": f"{site}:{package / 'src'}:{cli_env['PYTHONPATH']}"}
    alone, broken = probe(cli_env, "alone"), probe(broken_env, "broken")
    lines = broken["plugins"]["stdout"].splitlines()
    mine = next(line for line in lines if line.startswith(f"{name} "))
    assert "error" in mine and "0 components" in mine
    assert "RuntimeError: broken after importing vision, on purpose" in broken["plugins"]["stdout"]
    assert _vision_plugin_line(lines) == _vision_plugin_line(alone["plugins"]["stdout"].splitlines())
    vision_line, components = _vision_plugin_line(lines)
    assert " ok " in vision_line
    assert {"model: lenet5", "dataset: mnist", "task: image-classification"} <= set(components)
    assert "lenet5  [vision]" in broken["models"]["stdout"] and "mnist  [vision]" in broken["datasets"]["stdout"]
    assert broken["quickstart"]["code"] == 0, broken["quickstart"]["stderr"]
    assert f"warning: plugin '{name}'" in broken["plugins"]["stderr"]  # said once, when the plugins were loaded
