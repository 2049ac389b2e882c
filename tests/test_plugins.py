"""Entry-point discovery with real (throwaway) distributions, including broken ones."""
from __future__ import annotations

import pytest

from core_support import make_distribution, run_cli
from deepcourse import plugins
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
        line = next(l for l in out.stdout.splitlines() if l.startswith(name))
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
