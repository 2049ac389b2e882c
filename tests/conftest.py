"""Shared fixtures: a real throwaway plugin distribution (dist-info + entry point on sys.path) per test session.

Discovery in these tests goes through importlib.metadata exactly as for an installed package, and subprocesses
(the CLI, accelerate launch) see the same plugins through PYTHONPATH.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def make_distribution(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str],
                      version: str = "0.1.0", requires: list[str] = ()) -> None:
    """Write a minimal installed distribution into `site` (a folder on sys.path)."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    meta = [f"Metadata-Version: 2.1", f"Name: {dist}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    eps = "[deepcourse.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(eps)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A site folder holding the toy plugin (good) plus three broken ones, registered on sys.path."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(FIXTURES / "toy_plugin.py", site / "toy_plugin.py")
    make_distribution(site, "deepcourse-toy", {"toy": "toy_plugin"}, {})
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
    from deepcourse import plugins

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


def run_cli(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: int = 300
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepcourse", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


TOY_RECIPE = """\
name = "toy"
seed = 3
[task]
name = "toy-classification"
[data]
name = "toy_blobs"
batch_size = 16
n = 203
noise = 2.5
[model]
name = "toy_mlp"
hidden = 32
dropout = 0.3
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[scheduler]
name = "onecycle"
[train]
epochs = 3
log_every = 2
progress = false
"""


@pytest.fixture()
def toy_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return path
