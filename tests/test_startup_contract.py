"""A run's start-up: what it asks before its folder exists (the MLflow store, the compile backend), and what a stop
while it starts leaves behind (nothing, or a run that resumes, and the message says which).

The stops are real signals, sent by the process to itself at a chosen moment (tests/fixtures/stop_runner.py); the
MLflow servers are sockets of the test's own: one bound and not listening (the connection is refused), one listening
and never answering (the kernel completes the connection; no reply ever comes). Nothing waits on a clock.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from core_support import FIXTURES, TOY_RECIPE, run_cli

from deepcourse.cli.main import main
from deepcourse.errors import RecipeWarning

STARTING = "while the run was starting, before its first checkpoint: nothing was trained, and "


def stop_run(args: list[str], env: dict[str, str], at: str, signal_name: str = "SIGTERM"
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FIXTURES / "stop_runner.py"), *args],
                          env={**env, "STOP_AT": at, "STOP_SIGNAL": signal_name}, capture_output=True, text=True,
                          timeout=300)


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step-*"))


# -- a stop while the run starts ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("at", ["run-dir", "recipe-write", "trackers"])
def test_a_sigterm_while_a_new_run_starts_leaves_nothing_and_says_so(tmp_path: Path, toy_recipe: Path, cli_env,
                                                                     at: str) -> None:
    runs = tmp_path / "runs"
    out = stop_run(["run", str(toy_recipe), "--runs-root", str(runs)], cli_env, at)
    assert out.returncode == 143, out.stderr
    assert f"deepcourse: stopped by SIGTERM {STARTING}{runs / 'toy'}" in out.stderr, out.stderr
    assert "is removed; start the run again with the same command" in out.stderr and "Traceback" not in out.stderr
    assert not runs.exists()  # no lock, no temporary recipe, no empty checkpoints/


@pytest.mark.slow
def test_the_same_run_dir_starts_again_after_a_stop_while_starting(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    run = tmp_path / "run"
    args = ["run", str(toy_recipe), "--run-dir", str(run), "--no-report", "--set", "train.epochs=1"]
    out = stop_run(args, cli_env, "recipe-write")
    assert out.returncode == 143 and f"{STARTING}{run} is removed" in out.stderr, out.stderr
    assert not run.exists()
    run.mkdir()  # a --run-dir that existed (empty) is emptied, not removed; Ctrl-C is answered alike
    out = stop_run(args, cli_env, "run-dir", "SIGINT")
    assert out.returncode == 130 and f"stopped by SIGINT {STARTING}{run} is emptied" in out.stderr, out.stderr
    assert run.is_dir() and not any(run.iterdir())
    again = run_cli(args, cli_env)
    assert again.returncode == 0, again.stderr
    assert (run / "summary.json").is_file()


@pytest.mark.slow
def test_a_stop_as_training_begins_saves_and_one_while_a_resume_starts_keeps_the_run(tmp_path: Path,
                                                                                    toy_recipe: Path,
                                                                                    cli_env) -> None:
    run = tmp_path / "run"
    out = stop_run(["run", str(toy_recipe), "--run-dir", str(run), "--no-report"], cli_env, "training")
    assert out.returncode == 143, out.stderr
    assert f"stopped by SIGTERM; state saved in {run / 'checkpoints'}" in out.stderr
    assert f"Continue with: deepcourse run --resume {run}" in out.stderr
    first = checkpoints(run)
    assert len(first) == 1
    stopped = stop_run(["run", "--resume", str(run), "--no-report"], cli_env, "trackers")
    assert stopped.returncode == 143, stopped.stderr
    assert f"Continue with: deepcourse run --resume {run}" in stopped.stderr and "Traceback" not in stopped.stderr
    assert checkpoints(run) == first and (run / "recipe.toml").is_file()  # as its last checkpoint left it
    resumed = run_cli(["run", "--resume", str(run), "--no-report"], cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("at", ["recipe-write", "trackers"])
def test_a_run_killed_while_starting_is_no_dead_end(tmp_path: Path, toy_recipe: Path, cli_env, at: str) -> None:
    """SIGKILL cannot be answered: the folder keeps what the run had written (killed mid recipe: a lock file, a
    temporary recipe and an empty checkpoints/, what the documented sbatch requeue found). --resume says there is
    nothing to resume and the command that starts it again; that command (--run-dir) does."""
    run = tmp_path / "run"
    args = ["run", str(toy_recipe), "--run-dir", str(run), "--no-report", "--set", "train.epochs=1"]
    killed = stop_run(args, cli_env, at, "SIGKILL")
    assert killed.returncode == -9, killed.stderr
    left = {p.name for p in run.iterdir()}
    assert {".lock", "checkpoints"} <= left and not checkpoints(run)
    recipe = str(run / "recipe.toml") if at == "trackers" else "RECIPE"
    assert (recipe == "RECIPE") == any(name.startswith(".recipe.toml.tmp-") for name in left)
    resumed = run_cli(["run", "--resume", str(run)], cli_env)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert (f"--resume {run}: no complete checkpoint in {run / 'checkpoints'}: the run was stopped before its first "
            f"one, so there is nothing to resume. Start it again in that folder: deepcourse run {recipe} --run-dir "
            f"{run}") in resumed.stderr, resumed.stderr
    again = run_cli(["run", recipe if at == "trackers" else str(toy_recipe), *args[2:]], cli_env)
    assert again.returncode == 0, again.stderr
    assert f"--run-dir {run}: holds a run that was stopped before its first checkpoint" in again.stderr
    assert not any(p.name.startswith(".recipe.toml.tmp-") for p in run.iterdir())
    assert (run / "summary.json").is_file() and len(checkpoints(run)) == 1


# -- the MLflow store ---------------------------------------------------------------------------------------------
@pytest.fixture()
def here(tmp_path: Path, plugin_site, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's folder as the working directory, with the toy recipe in it and no MLflow settings inherited."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.toml").write_text(TOY_RECIPE)
    return tmp_path


@pytest.fixture()
def refused_port() -> Iterator[int]:
    """A port bound by this test and not listening: a connection to it is refused, and no one else can take it."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A server that accepts connections (the kernel completes them from the listen queue) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as server:
        yield server.getsockname()[1]


def run_with_mlflow(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    pytest.importorskip("mlflow")
    out = CliRunner().invoke(main, [*args, "--set", "train.trackers=['mlflow']", "--no-report"], env=env)
    assert "Traceback" not in out.output, out.output
    return out.exit_code, out.stderr


def test_an_mlflow_server_that_refuses_exits_2_before_the_run_folder(here: Path, refused_port: int) -> None:
    uri = f"http://127.0.0.1:{refused_port}"
    code, err = run_with_mlflow(["run", "toy.toml"], {"MLFLOW_TRACKING_URI": uri})
    assert code == 2
    assert (f"MLFLOW_TRACKING_URI='{uri}': MLflow cannot log there: nothing accepts connections at "
            f"127.0.0.1:{refused_port} (Connection refused); correct it, start its server, or unset it") in err, err
    assert not (here / "runs").exists()


def test_an_mlflow_server_that_never_answers_exits_2_at_the_timeout(here: Path, silent_port: int) -> None:
    uri = f"http://127.0.0.1:{silent_port}"
    code, err = run_with_mlflow(["run", "toy.toml"], {"MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_TIMEOUT": "1"})
    assert code == 2
    assert (f"MLFLOW_TRACKING_URI='{uri}': MLflow cannot log there: the server at 127.0.0.1:{silent_port} accepted "
            f"the connection but sent no answer within 1 s (MLFLOW_HTTP_REQUEST_TIMEOUT)") in err, err
    assert not (here / "runs").exists()


def _mlflow_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("mlflow", "mlflow-skinny"):
        try:
            return int(version(dist).split(".")[0])
        except PackageNotFoundError:
            continue
    return 0


@pytest.mark.parametrize(("uri", "said"), [
    ("foo://x", "MLflow has no tracking store for the scheme 'foo:' (it knows: "),
    ("http://", "it names no host"),
    ("http://127.0.0.1:port", "not a valid URI (Port could not be cast to integer value as 'port')"),
    ("sqlite:///{here}", "is a folder; name a database file in it (sqlite:///{here}/mlflow.db)"),
    ("sqlite:///{here}/toy.toml", "toy.toml is not a SQLite database (file is not a database)"),
    pytest.param("{here}/mlruns", "MLflow no longer logs to a folder unless MLFLOW_ALLOW_FILE_STORE=true",
                 marks=pytest.mark.skipif(_mlflow_major() < 3, reason="MLflow 2 still logs to folders")),
])
def test_an_mlflow_uri_it_cannot_use_exits_2_naming_it(here: Path, uri: str, said: str) -> None:
    uri, said = uri.format(here=here), said.format(here=here)
    code, err = run_with_mlflow(["run", "toy.toml"], {"MLFLOW_TRACKING_URI": uri})
    assert code == 2 and f"MLFLOW_TRACKING_URI={uri!r}: MLflow cannot log there: " in err and said in err, err
    assert not (here / "runs").exists() and not (here / "mlruns").exists()


def test_a_database_store_without_its_driver_names_the_package(here: Path, silent_port: int) -> None:
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the MySQL driver is installed here")
    code, err = run_with_mlflow(["run", "toy.toml"], {"MLFLOW_TRACKING_URI": f"mysql://u@127.0.0.1:{silent_port}/db"})
    assert code == 2 and "its database driver is not installed (No module named 'MySQLdb'; pip install mysqlclient" \
        in err, err
    assert not (here / "runs").exists()


def test_a_resumed_run_whose_mlflow_store_is_gone_says_so(here: Path, refused_port: int) -> None:
    run = here / "run"
    out = CliRunner().invoke(main, ["run", "toy.toml", "--run-dir", str(run), "--no-report",
                                    "--set", "train.epochs=1"])
    assert out.exit_code == 0, out.output
    uri = f"http://127.0.0.1:{refused_port}"
    (run / "trackers.json").write_text(json.dumps({"mlflow_run_id": "0123", "mlflow_tracking_uri": uri}))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    code, err = run_with_mlflow(["run", "--resume", str(run)], {})
    assert code == 2
    assert (f"{run / 'trackers.json'}: mlflow_tracking_uri '{uri}' (the store this run logged to): MLflow cannot log "
            f"there: nothing accepts connections at 127.0.0.1:{refused_port}") in err, err
    assert "set MLFLOW_TRACKING_URI to the store to log to now" in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.mark.slow
def test_an_mlflow_sqlite_store_in_a_new_folder_is_used(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    """A valid store the checks must let through: SQLite in a folder MLflow creates."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    store = tmp_path / "tracking" / "new" / "mlflow.db"
    env = {**{k: v for k, v in cli_env.items() if not k.startswith("MLFLOW_")},
           "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    out = run_cli(["run", str(toy_recipe), "--run-dir", str(tmp_path / "run"), "--no-report",
                   "--set", "train.epochs=1", "--set", "train.trackers=['mlflow']"], env)
    assert out.returncode == 0, out.stderr
    assert store.is_file()
    assert json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow_tracking_uri"] == f"sqlite:///{store}"


@pytest.mark.slow
def test_an_mlflow_store_that_answers_but_refuses_the_run_exits_2_and_leaves_nothing(tmp_path: Path,
                                                                                    toy_recipe: Path,
                                                                                    cli_env) -> None:
    """The store is there, and will not start the run: an experiment of the recipe's name deleted in MLflow."""
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("toy"))
    env = {**{k: v for k, v in cli_env.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri}
    runs = tmp_path / "runs"
    out = run_cli(["run", str(toy_recipe), "--runs-root", str(runs), "--set", "train.trackers=['mlflow']"], env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"train.trackers: MLflow at '{uri}' did not start the run: " in out.stderr, out.stderr
    assert not runs.exists()


# -- compile backends ---------------------------------------------------------------------------------------------
def test_a_launcher_backend_that_cannot_work_here_is_named_as_the_launchers(here: Path) -> None:
    out = CliRunner().invoke(main, ["run", "toy.toml", "--set", "train.device='cpu'"],
                             env={"ACCELERATE_DYNAMO_BACKEND": "TENSORRT"})
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert ("accelerate launch --dynamo_backend (ACCELERATE_DYNAMO_BACKEND): 'tensorrt' compiles for a CUDA GPU "
            "(NVIDIA TensorRT), and this run is on the CPU. Valid on the CPU: 'inductor', 'aot_eager', 'eager'"
            in out.stderr), out.stderr
    assert not (here / "runs").exists()


@pytest.mark.parametrize(("mode", "instead"), [("reduce-overhead", "default"),
                                               ("max-autotune", "max-autotune-no-cudagraphs"),
                                               ("max-autotune-no-cudagraphs", None), ("default", None)])
def test_cuda_graph_modes_on_a_cpu_warn_that_they_compile_without_them(plugin_site, mode: str,
                                                                      instead: str | None) -> None:
    """Warned, not refused: the model trains the same without CUDA graphs, and the same recipe gets them on a GPU."""
    from deepcourse.recipe.load import load_recipe
    from deepcourse.training.accelerator import make_accelerator

    recipe = load_recipe(data=tomllib.loads(TOY_RECIPE),
                         overrides=["train.device='cpu'", f"train.compile={{mode = '{mode}'}}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_accelerator(recipe)
        make_accelerator(recipe, warn=False)  # evaluation and prediction: said once, by the run
    said = [str(w.message) for w in caught if issubclass(w.category, RecipeWarning)]
    if instead is None:
        assert not said
    else:
        assert said == [f"train.compile.mode = '{mode}': its CUDA graphs need a CUDA GPU, and this run is on the CPU, "
                        f"where torch compiles without them (as mode '{instead}'): the model trains the same, without "
                        f"their speed-up. Set it to '{instead}' to say so"]
