"""Studies: `deepcourse tune` searches and `deepcourse sweep` grids on Optuna, run by several workers over a journal
file or a real PostgreSQL server, killed and resumed, pruned, with error bars checked against hand arithmetic."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from core_support import TOY_RECIPE, run_cli

pytestmark = pytest.mark.slow

SEARCH = """
[search]
trials = {trials}
sampler = "{sampler}"
pruner = "{pruner}"
seeds = {seeds}
[search.space]
"optimizer.lr" = {{ low = 0.002, high = 0.3, log = true }}
"model.hidden" = {{ low = 4, high = 32, step = 4 }}
"""


def search_recipe(folder: Path, trials: int = 6, sampler: str = "tpe", pruner: str = "none", seeds: int = 1,
                  epochs: int = 3) -> Path:
    path = folder / "search.toml"
    path.write_text(TOY_RECIPE.replace('name = "toy"', 'name = "toysearch"').replace("epochs = 3", f"epochs = {epochs}")
                    + SEARCH.format(trials=trials, sampler=sampler, pruner=pruner, seeds=seeds))
    return path


def trials_of(folder: Path, storage: str | None = None) -> list:
    import optuna

    from deepcourse.studies.store import open_storage, storage_of

    record = json.loads((folder / "study.json").read_text())
    study = optuna.load_study(study_name=record["study"], storage=open_storage(storage or storage_of(record, folder)))
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("skipped")]


def finished(trials: list) -> list:
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


# -- one worker: search, report, seeds, grid ------------------------------------------------------------------------
def test_a_search_reports_its_trials_writes_a_runnable_best_recipe_and_repeats_it_over_seeds(
        tmp_path: Path, cli_env) -> None:
    recipe = search_recipe(tmp_path, trials=5, seeds=3)
    out = run_cli(["tune", str(recipe), "--runs-root", str(tmp_path / "runs"), "--study", "s"], cli_env, timeout=600)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "runs" / "toysearch" / "study-s"
    trials = trials_of(folder)
    assert len(finished(trials)) == 5 == len(trials)
    assert len({t.user_attrs["run_dir"] for t in trials}) == 5  # each trial its own run directory
    for t in trials:
        summary = json.loads((folder / t.user_attrs["run_dir"] / "summary.json").read_text())
        assert t.value == summary["best"]["accuracy"]
    md = (folder / "study.md").read_text()
    assert "5 of 5 trials finished" in md and "](history.png)" in md and "](importances.png)" in md
    assert all((folder / name).stat().st_size > 1000 for name in ("history.png", "importances.png", "parallel.png"))
    best = max(trials, key=lambda t: t.value)
    assert f"Best: trial {best.number}, accuracy {best.value:.4f}" in md
    # the best configuration again with seeds 4 and 5 (the trial was seed 3), named by it, and its error bars
    values = [best.value] + [json.loads((folder / f"{best.user_attrs['run_dir']}-seed{s}" / "summary.json")
                                        .read_text())["best"]["accuracy"] for s in (4, 5)]
    from deepcourse.results.stats import summarize

    assert summarize(values).shown() in md and "(n=3)" in md
    again = run_cli(["run", str(folder / "best.toml"), "--run-dir", str(tmp_path / "again"), "--no-report"], cli_env)
    assert again.returncode == 0, again.stderr
    rerun = json.loads((tmp_path / "again" / "summary.json").read_text())["best"]["accuracy"]
    assert rerun == best.value  # best.toml is the best trial's recipe, as it ran
    rows = (folder / "study.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,value,optimizer.lr,model.hidden,wall time (s)") and len(rows) == 6


def test_a_grid_search_runs_every_point_once(tmp_path: Path, cli_env) -> None:
    recipe = search_recipe(tmp_path, sampler="grid", epochs=1)
    text = recipe.read_text().replace('"optimizer.lr" = { low = 0.002, high = 0.3, log = true }',
                                      '"optimizer.lr" = [0.01, 0.1]')
    recipe.write_text(text.replace('"model.hidden" = { low = 4, high = 32, step = 4 }',
                                   '"model.hidden" = { low = 8, high = 16, step = 8 }'))
    out = run_cli(["tune", str(recipe), "--runs-root", str(tmp_path / "runs"), "--study", "g", "-j", "2"], cli_env)
    assert out.returncode == 0, out.stderr
    trials = trials_of(tmp_path / "runs" / "toysearch" / "study-g")
    points = sorted((t.params["optimizer.lr"], t.params["model.hidden"]) for t in trials)
    assert points == [(0.01, 8), (0.01, 16), (0.1, 8), (0.1, 16)]


def test_a_bad_space_exits_2_naming_the_key(tmp_path: Path, cli_env) -> None:
    cases = {'"optimizer.lrr" = { low = 0.1, high = 0.2 }': 'search.space["optimizer.lrr"] = 0.1: optimizer.lrr: '
                                                            "unknown key. Did you mean 'lr'?",
             '"model.hidden" = { low = 32, high = 4 }': 'search.space["model.hidden"]: low (32) must be below high (4)',
             '"optimizer.lr" = { low = 0.0, high = 0.1, log = true }':
                 'search.space["optimizer.lr"]: a log range needs low > 0',
             '"model.dropout" = [0.1, 1.5]': 'search.space["model.dropout"] = 1.5: model.dropout: input should be less',
             '"model.hidden" = { low = 4, high = 8, stpe = 2 }':
                 'search.space["model.hidden"].stpe: unknown key. Did you mean \'step\'?'}
    for line, message in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(TOY_RECIPE + "[search]\n[search.space]\n" + line + "\n")
        out = run_cli(["check", str(bad)], cli_env)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (line, out.stderr)
    empty = tmp_path / "empty.toml"
    empty.write_text(TOY_RECIPE)
    out = run_cli(["tune", str(empty), "--runs-root", str(tmp_path / "runs")], cli_env)
    assert out.returncode == 2 and "nothing to search: add a [search.space] table" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_pruned_search_keeps_the_callbacks_the_recipe_declares(tmp_path: Path, cli_env) -> None:
    """The pruning callback joins the recipe's own callbacks: a trial still runs the ones the recipe declares. (Two
    epochs: a pruner chosen for trials that evaluate once is refused, it has nothing to prune.)"""
    import tomllib

    recipe = search_recipe(tmp_path, trials=1, pruner="median", epochs=2)
    recipe.write_text(recipe.read_text().replace(
        "progress = false\n", "progress = false\ncallbacks = [{name = 'pause_at', step = 2, seconds = 0.0}]\n", 1))
    out = run_cli(["tune", str(recipe), "--runs-root", str(tmp_path / "runs"), "--study", "cb"], cli_env)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "runs" / "toysearch" / "study-cb"
    (trial,) = trials_of(folder)
    run = folder / trial.user_attrs["run_dir"]
    callbacks = tomllib.loads((run / "recipe.toml").read_text())["train"]["callbacks"]
    assert [cb["name"] for cb in callbacks] == ["pause_at", "optuna_pruning"]
    assert callbacks[1]["trial"] == trial._trial_id and callbacks[1]["monitor"] == "accuracy"
    assert "paused" in (folder / f"{run.name}.log").read_text()  # the recipe's callback ran


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs a POSIX system")
def test_pruning_stops_trials_early_and_leaves_normal_run_directories(tmp_path: Path, cli_env) -> None:
    """12 trials on the bundled digits, median pruning: the bad learning rates stop after a few epochs."""
    pytest.importorskip("deepcourse_vision")
    recipe = tmp_path / "digits.toml"
    recipe.write_text('extends = "QUICKSTART"\nname = "digits_search"\n[data]\ntrain_samples = 400\n'
                      '[train]\nepochs = 6\nprogress = false\n[search]\ntrials = 10\npruner = "median"\n'
                      '[search.space]\n"optimizer.lr" = { low = 1e-5, high = 1.0, log = true }\n'
                      .replace("QUICKSTART", str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml")))
    out = run_cli(["tune", str(recipe), "--runs-root", str(tmp_path / "runs"), "--study", "p"], cli_env, timeout=900)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "runs" / "digits_search" / "study-p"
    trials = trials_of(folder)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert len(finished(trials)) == 10 and pruned, [(t.number, t.state.name, t.value) for t in trials]
    for t in pruned:
        run = folder / t.user_attrs["run_dir"]
        marker = json.loads((run / "pruned.json").read_text())
        assert marker["epoch"] < 6 and (run / "summary.json").exists() and (run / "best" / "model.safetensors").exists()
    assert "pruned" in (folder / "study.md").read_text()


# -- killed and resumed -------------------------------------------------------------------------------------------
def test_a_study_killed_mid_trial_resumes_to_its_budget_without_repeating_a_trial(tmp_path: Path, cli_env) -> None:
    recipe = search_recipe(tmp_path, trials=5, epochs=6)
    cmd = [sys.executable, "-m", "deepcourse", "tune", str(recipe), "--runs-root", str(tmp_path / "runs"),
           "--study", "k", "--set", "train.checkpoint_every=2"]
    folder = tmp_path / "runs" / "toysearch" / "study-k"
    worker = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it while its third trial has a checkpoint
        if list((folder / "trial-0002" / "checkpoints").glob("step-*")) if folder.exists() else False:
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(3)  # the trial's own run notices its worker is gone (SIGTERM), saves and stops
    resumed = run_cli(["tune", "--resume", str(folder)], cli_env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    trials = trials_of(folder)
    done = finished(trials)
    assert len(done) == 5
    assert len({t.user_attrs["run_dir"] for t in done}) == 5  # no run directory trained twice
    killed = [t for t in trials if t.state.name == "FAIL"]
    assert [t.user_attrs["run_dir"] for t in killed] == ["trial-0002"]
    retry = next(t for t in done if t.user_attrs.get("retry_of") == killed[0].number)
    assert retry.user_attrs["run_dir"] == "trial-0002" and retry.params == killed[0].params
    assert "resuming" in (folder / "trial-0002.log").read_text()


# -- several workers ----------------------------------------------------------------------------------------------
def two_workers(recipe: Path, root: Path, env: dict[str, str], *extra: str) -> list[subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "deepcourse", "tune", str(recipe), "--runs-root", str(root), "--study", "shared",
           *extra]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    return [subprocess.CompletedProcess(cmd, p.wait(timeout=600), *p.communicate()) for p in procs]


def check_shared(trials: list, budget: int) -> None:
    done = finished(trials)
    assert len(done) == budget, [(t.number, t.state.name) for t in trials]
    assert len({t.user_attrs["run_dir"] for t in done}) == budget
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both workers took trials


def test_two_workers_share_the_journal_file(tmp_path: Path, cli_env) -> None:
    recipe = search_recipe(tmp_path, trials=6, epochs=2)
    results = two_workers(recipe, tmp_path / "runs", cli_env)
    assert all(r.returncode == 0 for r in results), results[0].stderr + results[1].stderr
    check_shared(trials_of(tmp_path / "runs" / "toysearch" / "study-shared"), 6)


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    return None


@pytest.fixture(scope="module")
def postgresql(tmp_path_factory: pytest.TempPathFactory):
    """A real PostgreSQL server in a temporary folder (Debian's postgresql package; .ci/run installs it)."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
    psycopg = pytest.importorskip("psycopg")
    import tempfile

    # not under pytest's temporary folder: it is private to this user, and the server runs as another one
    root = Path(tempfile.mkdtemp(prefix="deepcourse-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's postgres user
        user = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "deepcourse", "-A", "trust", "--no-sync"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
                    f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], check=True,
                   capture_output=True)
    with psycopg.connect(host="127.0.0.1", port=port, user="deepcourse", dbname="postgres",
                         autocommit=True) as connection:
        connection.execute("CREATE DATABASE studies")
    yield f"postgresql://deepcourse@127.0.0.1:{port}/studies"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_workers_started_together_on_an_empty_database_all_open_it(postgresql: str) -> None:
    """Every worker of a study starts by creating Optuna's tables if they are missing; started at once on an empty
    database they race, and the losers must find the tables made instead of dying with "already exists"."""
    import threading

    import psycopg

    from deepcourse.studies.store import open_storage

    url = postgresql.rsplit("/", 1)[0]
    with psycopg.connect(url + "/postgres", autocommit=True) as connection:
        connection.execute("CREATE DATABASE race")
    start, errors, opened = threading.Barrier(6), [], []

    def worker() -> None:
        start.wait()
        try:
            opened.append(open_storage(url + "/race"))
        except Exception as error:  # noqa: BLE001 - collected and shown by the assertion
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(opened) == 6
    assert opened[0].get_all_studies() == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell by hand, not optimize
def test_a_bare_postgresql_url_opens_with_psycopg_3_alone(postgresql: str, monkeypatch) -> None:
    """SQLAlchemy 2.0 reads a bare postgresql:// as psycopg2, which `deepcourse[postgresql]` does not install (Optuna:
    "Failed to import DB access module"). Here SQLAlchemy's default goes back to 2.0's, with psycopg 3 alone
    installed: the study opens on the real server all the same."""
    import optuna
    from sqlalchemy.dialects.postgresql import base, psycopg2

    from deepcourse.studies.store import open_storage

    monkeypatch.setattr(base, "dialect", psycopg2.dialect)  # what a bare postgresql:// means to SQLAlchemy 2.0
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # not installed, as with the extra alone
    study = optuna.create_study(study_name="bare-url", storage=open_storage(postgresql))
    study.tell(study.ask(), 1.5)
    assert optuna.load_study(study_name="bare-url", storage=open_storage(postgresql)).best_value == 1.5


def test_two_workers_share_a_postgresql_study(tmp_path: Path, cli_env, postgresql: str) -> None:
    recipe = search_recipe(tmp_path, trials=6, epochs=2)
    results = two_workers(recipe, tmp_path / "runs", cli_env, "--storage", postgresql)
    assert all(r.returncode == 0 for r in results), results[0].stderr + results[1].stderr
    check_shared(trials_of(tmp_path / "runs" / "toysearch" / "study-shared", postgresql), 6)


# -- Slurm --------------------------------------------------------------------------------------------------------
def test_slurm_workers_through_submitit_local_executor(tmp_path: Path, cli_env, monkeypatch) -> None:
    """--launcher slurm's code path with submitit's local executor (everything but sbatch), and the sbatch script
    its parameters make."""
    pytest.importorskip("submitit")
    from deepcourse.studies import slurm, tune

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", cli_env["PYTHONPATH"])  # the workers' runs find the toy plugin
    recipe = search_recipe(tmp_path, trials=3, epochs=1)
    spec = tune.prepare(str(recipe), study_name="slurm", runs_root=tmp_path / "runs")
    jobs = slurm.submit(spec, 2, cluster="local")
    assert len(jobs) == 2
    deadline = time.monotonic() + 600
    while len(finished(trials_of(spec.folder))) < 3 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(finished(trials_of(spec.folder))) == 3
    for job in jobs:  # each worker writes study.md as it leaves: the last one to leave has seen all three trials
        job.result()
    assert "3 of 3 trials finished" in (spec.folder / "study.md").read_text()
    params = slurm.parameters(8, partition="gpu", time=90, gpus=1, cpus=6, mem="32G", name="deepcourse-x")
    assert params == {"name": "deepcourse-x", "timeout_min": 90, "gpus_per_node": 1, "cpus_per_task": 6,
                      "tasks_per_node": 1, "nodes": 1, "slurm_array_parallelism": 8, "slurm_partition": "gpu",
                      "slurm_mem": "32G"}
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="python -m submitit.core._submit", folder=str(tmp_path / "logs"),
                                 job_name="deepcourse-x", partition="gpu", time=90, gpus_per_node=1, cpus_per_task=6,
                                 ntasks_per_node=1, nodes=1, mem="32G", map_count=8, array_parallelism=8)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=32G", "#SBATCH --array=0-7%8"):
        assert line in script, script


# -- error bars ---------------------------------------------------------------------------------------------------
def test_means_spreads_intervals_and_significance_by_hand() -> None:
    from deepcourse.results.stats import differs, summarize, welch_p

    s = summarize([0.90, 0.92, 0.94])
    assert s.mean == pytest.approx(0.92) and s.std == pytest.approx(0.02)
    # t(0.975, 2) = 4.302653: half width 4.302653 * 0.02 / sqrt(3) = 0.049683
    assert s.ci_low == pytest.approx(0.92 - 0.049683, abs=1e-6) and s.ci_high == pytest.approx(0.969683, abs=1e-6)
    assert s.shown() == "0.9200 ± 0.0200 (n=3)" and summarize([0.5]).shown() == "0.5000 (n=1)"
    # Welch by hand: means 0.92 and 0.80, variances 0.0004 and 0.0009, n = 3 each
    a, b = 0.0004 / 3, 0.0009 / 3
    t = (0.92 - 0.80) / (a + b) ** 0.5  # 5.7646
    df = (a + b) ** 2 / (a ** 2 / 2 + b ** 2 / 2)  # Welch-Satterthwaite: 3.4845
    from scipy import stats

    assert t == pytest.approx(5.7646, abs=1e-4) and df == pytest.approx(3.4845, abs=1e-4)
    assert welch_p([0.90, 0.92, 0.94], [0.77, 0.80, 0.83]) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-6)
    assert welch_p([0.90, 0.92, 0.94], [0.77, 0.80, 0.83]) == pytest.approx(0.00679, abs=1e-5)
    assert differs([0.90, 0.92, 0.94], [0.77, 0.80, 0.83]) is True
    assert differs([0.90, 0.92, 0.94], [0.91, 0.925, 0.93]) is False
    assert differs([0.9], [0.8, 0.7]) is None  # one run: no spread, nothing to test


def test_compare_groups_runs_that_differ_only_in_their_seed(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    runs = []
    for hidden in (4, 32):
        for seed in (1, 2, 3):
            run = tmp_path / f"h{hidden}-s{seed}"
            out = run_cli(["run", str(toy_recipe), "--run-dir", str(run), "--set", f"seed={seed}", "--set",
                           f"model.hidden={hidden}", "--set", "train.epochs=1", "--no-report"], cli_env)
            assert out.returncode == 0, out.stderr
            runs.append(run)
    out = run_cli(["compare", *map(str, runs), "-o", str(tmp_path / "cmp")], cli_env)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Welch's t-test" in md and "| model.hidden=4 | 3 |" in md and "| model.hidden=32 | 3 |" in md
    assert "best accuracy 95% CI" in md and "vs best" in md


def test_a_sweep_of_seeds_alone_repeats_the_recipe(plugin_site, toy_recipe: Path) -> None:
    from deepcourse.studies.sweep import plan

    dims, points, seeds = plan(toy_recipe, [], 3, [])
    assert seeds == 3 and [d.key for d in dims] == ["seed"]
    assert [(p["label"], p["seed"], p["dir"]) for p in points] == [("base", 3, "000-base-seed3"),
                                                                   ("base", 4, "001-base-seed4"),
                                                                   ("base", 5, "002-base-seed5")]
    from deepcourse.errors import UserError

    with pytest.raises(UserError, match="or --seeds N to repeat the recipe over N seeds"):
        plan(toy_recipe, [], 1, [])


# -- issue 25: what a space, a grid and an interval cannot mean -----------------------------------------------------
def test_an_interval_stays_within_the_metrics_range() -> None:
    """Student's t interval, cut to [0, 1] for a fraction and to [0, inf) for a loss; other values untouched."""
    from deepcourse.results.stats import metric_range, summarize

    s = summarize([0.99, 1.0, 0.995], "accuracy")
    # by hand: mean 0.995, std 0.005, half width 4.302653 * 0.005 / sqrt(3) = 0.012421: [0.982579, 1.007421]
    assert s.ci_low == pytest.approx(0.982579, abs=1e-6) and s.ci_high == 1.0
    assert summarize([99.0, 100.0, 99.5], "ner_f1", scale=100).ci_high == 100.0
    assert summarize([0.01, 0.02, 0.0], "loss").ci_low == 0.0
    assert summarize([0.99, 1.0, 0.995]).ci_high == pytest.approx(1.007421, abs=1e-6)  # no metric: no range
    assert metric_range("top5_accuracy") == (0.0, 1.0) and metric_range("perplexity") == (-float("inf"), float("inf"))


def test_a_study_warns_of_what_runs_but_not_as_written(plugin_site, toy_recipe: Path) -> None:
    import warnings

    from deepcourse.errors import RecipeWarning
    from deepcourse.recipe.load import load_recipe
    from deepcourse.recipe.searchspace import check_study, parse_space

    space = ('search.space={"model.hidden" = {low = 4, high = 9, step = 2}, "model.dropout" = [0.1], '
             '"train.log_every" = [1, 2], "optimizer.lr" = {low = 0.01, high = 0.1}}')
    recipe = load_recipe(toy_recipe, [space, "search.sampler='cmaes'"])
    dims, problems = parse_space(recipe.search.space)
    assert problems == []
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        check_study(recipe, dims)
    messages = [str(w.message) for w in said if w.category is RecipeWarning]
    assert messages == [
        'search.space["model.hidden"]: high (9) is not reached in steps of 2 from 4; the highest value tried is 8',
        'search.space["model.dropout"]: one choice (0.1): every trial uses it; set it in the recipe instead, or give '
        'more choices',
        'search.space["train.log_every"]: train.log_every does not change what a run computes, so every trial of it '
        'scores alike',
        'search.sampler: "cmaes" samples the ranges; the choices (model.dropout, train.log_every) it draws at random, '
        'each on its own']
    grid = load_recipe(toy_recipe, ['search.space={"model.hidden" = [4, 8], "model.dropout" = [0.0, 0.5]}',
                                    "search.sampler='grid'", "search.trials=3"])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        check_study(grid, parse_space(grid.search.space)[0])
        check_study(grid, parse_space(grid.search.space)[0], trials=4)  # --trials 4: the grid's size, nothing lost
    assert [str(w.message) for w in said] == ["search.trials = 3 is not used: the grid sampler runs each of the "
                                              "space's 4 points once"]


def test_the_documented_spaces_and_grids_still_work(plugin_site, toy_recipe: Path) -> None:
    """A table choice with a key searched inside it (the shipped optimizers search), a pruner left at its default
    on one epoch, and a grid over the seed without --seeds are what they look like: accepted."""
    from deepcourse.recipe.load import load_recipe
    from deepcourse.recipe.searchspace import parse_space, study_problems
    from deepcourse.studies.sweep import plan

    recipe = load_recipe(toy_recipe, ['search.space={"optimizer" = [{name = "sgd"}, {name = "adam"}], '
                                      '"optimizer.lr" = {low = 0.001, high = 0.1, log = true}}', "train.epochs=1"])
    dims, problems = parse_space(recipe.search.space)
    assert problems == [] and study_problems(recipe, dims) == []
    _, points, _ = plan(toy_recipe, ['optimizer={name = "sgd"},{name = "adam"}', "optimizer.lr=0.1,0.01"], None, [])
    assert [p["label"] for p in points] == ["optimizer={name=sgd}, optimizer.lr=0.1",
                                            "optimizer={name=sgd}, optimizer.lr=0.01",
                                            "optimizer={name=adam}, optimizer.lr=0.1",
                                            "optimizer={name=adam}, optimizer.lr=0.01"]
    _, points, seeds = plan(toy_recipe, ["seed=1,2"], None, [])
    assert seeds == 1 and [p["overrides"] for p in points] == [["seed=1"], ["seed=2"]]


def test_trials_that_evaluate_once_are_not_pruned(plugin_site, toy_recipe: Path) -> None:
    """One evaluation per trial: the default pruner is left out (it would only mark finished trials below the median
    as pruned, and leave them out of the best); one the recipe chooses is refused, naming search.pruner."""
    from deepcourse.recipe.load import load_recipe
    from deepcourse.recipe.searchspace import parse_space, pruner_for, study_problems

    space = 'search.space={"optimizer.lr" = {low = 0.01, high = 0.1}}'
    for sets, pruner, refused in ((["train.epochs=1"], "none", False), (["train.epochs=2"], "median", False),
                                  (["train.epochs=4", "eval.every=4"], "none", False),
                                  (["train.epochs=1", "search.pruner='median'"], "median", True),
                                  (["train.epochs=1", "search.pruner='none'"], "none", False)):
        recipe = load_recipe(toy_recipe, [space, *sets])
        dims, _ = parse_space(recipe.search.space)
        problems = study_problems(recipe, dims)
        assert pruner_for(recipe, dims) == pruner and bool(problems) is refused, (sets, problems)
        assert not problems or problems[0].startswith('search.pruner: "median" has nothing to prune')
