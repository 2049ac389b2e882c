"""Shared fixtures: a real throwaway plugin distribution (dist-info + entry point on sys.path) per test session.

Discovery in these tests goes through importlib.metadata exactly as for an installed package, and subprocesses
(the CLI, accelerate launch) see the same plugins through PYTHONPATH.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from core_support import FIXTURES, TOY_RECIPE, make_distribution

from deepcourse.api import load_plugins

load_plugins()  # the explicit discovery step the command line takes first: registries are filled, never implied

@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A site folder holding the toy plugin (good) plus three broken ones, registered on sys.path."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(FIXTURES / "toy_plugin.py", site / "toy_plugin.py")
    make_distribution(site, "deepcourse-toy", {"toy": "toy_plugin"}, {})
    shutil.copy(FIXTURES / "toy_lab.py", site / "toy_lab.py")
    make_distribution(site, "deepcourse-toylab", {"toylab": "toy_lab"}, {})
    make_distribution(site, "broken-import", {"broken": "broken_plugin"},
                      {"broken_plugin": "raise RuntimeError('this plugin is broken on purpose')\n"})
    make_distribution(site, "greedy-plugin", {"greedy": "greedy_plugin:setup"}, {"greedy_plugin": """
        from deepcourse.registry import OPTIMIZERS, DATASETS

        def setup():
            @DATASETS.register("greedy_data")
            def greedy_data():
                '''registered before the conflict: must be rolled back'''
            OPTIMIZERS.register("sgd", lambda: None)  # taken by the core
        """})
    make_distribution(site, "badsig-plugin", {"badsig": "badsig_plugin"}, {"badsig_plugin": """
        from deepcourse.registry import MODELS

        @MODELS.register("needs_positional")
        def needs_positional(width, /):
            return width
        """})
    make_distribution(site, "future-plugin", {"future": "future_plugin"},
                      {"future_plugin": "from deepcourse.registry import MODELS\nMODELS.register('future_net', "
                                        "lambda: None)\n"}, requires=["deepcourse>=99"])
    sys.path.insert(0, str(site))
    from deepcourse import discovery as plugins

    plugins.refresh()
    yield site
    sys.path.remove(str(site))


@pytest.fixture(scope="session")
def cli_env(plugin_site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DEEPCOURSE_PLUGIN_ERRORS", None)
    return env


@pytest.fixture()
def toy_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return path
