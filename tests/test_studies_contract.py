"""The input contract of studies where the bad-input corpus cannot reach: valid inputs that must keep working (a
journal cut short by a crash, a study folder that was moved, more trials on resume), a driver that is not installed,
and Ctrl-C on a study's worker, which saves, exits 130 and resumes. The refusals themselves are corpus cases
(tests/bad_inputs/expected.toml, issue 25)."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from core_support import TOY_SEARCH_HEAD, run_cli

from deepcourse.errors import RecipeWarning, UserError

SEARCH = TOY_SEARCH_HEAD + """\
{callbacks}
[search]
trials = 1
pruner = "none"
[search.space]
"optimizer.lr" = {{ low = 0.01, high = 0.1, log = true }}
"""


def search_recipe(folder: Path, callbacks: str = "") -> Path:
    path = folder / "search.toml"
    path.write_text(SEARCH.format(callbacks=callbacks))
    return path


def load(folder: Path, storage: str | None = None):
    import optuna

    from deepcourse.studies.store import open_storage, storage_of

    record = json.loads((folder / "study.json").read_text())
    return optuna.load_study(study_name=record["study"], storage=open_storage(storage or storage_of(record, folder)))


def cut_last_record(journal: Path) -> None:
    """What a crash in the middle of a write leaves: the last record cut in half, no newline."""
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[:start + (len(data) - start) // 2])


# -- storage ------------------------------------------------------------------------------------------------------
def test_a_journal_cut_short_by_a_crash_is_resumed_from_the_records_before_it(tmp_path: Path, caplog) -> None:
    import optuna

    from deepcourse.studies.store import open_storage

    journal = tmp_path / "study.log"
    study = optuna.create_study(study_name="s", storage=open_storage(str(journal)))
    for value in (1.0, 2.0):
        study.tell(study.ask(), value)
    cut_last_record(journal)  # the second trial's result is lost in the crash
    with caplog.at_level(logging.WARNING, logger="deepcourse"):
        study = optuna.load_study(study_name="s", storage=open_storage(str(journal), new=False))
    assert "its last record was cut short (a crash in the middle of a write); dropped it" in caplog.text
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "RUNNING"]
    study.tell(study.ask(), 3.0)  # written after the repaired end, not glued to the torn record
    again = optuna.load_study(study_name="s", storage=open_storage(str(journal), new=False))
    assert [t.value for t in again.get_trials()] == [1.0, None, 3.0]
    assert journal.read_bytes().endswith(b"\n") and not (tmp_path / "study.log.lock").exists()


def test_a_missing_postgresql_driver_names_the_extra_to_install(monkeypatch) -> None:
    from deepcourse.studies.store import open_storage

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if `pip install 'deepcourse[postgresql]'` never ran
    with pytest.raises(UserError, match=r"--storage postgresql://u@127.0.0.1:9/db: the database driver 'psycopg' is "
                                        r"not installed: pip install 'deepcourse\[postgresql\]'"):
        open_storage("postgresql://u@127.0.0.1:9/db")


# -- study folders and resume (in-process: no trial runs) ---------------------------------------------------------
def test_a_moved_study_folder_keeps_to_its_own_journal(tmp_path: Path, plugin_site) -> None:
    from deepcourse.studies import tune

    spec = tune.prepare(str(search_recipe(tmp_path)), study_name="m", runs_root=tmp_path / "runs")
    moved = tmp_path / "elsewhere" / "study-m"
    shutil.copytree(spec.folder, moved)
    record = json.loads((moved / "study.json").read_text())
    assert record["storage"] == "study.log"  # recorded relative to the folder, which may move
    # a folder recorded before that named its journal absolutely, the original still in place
    (moved / "study.json").write_text(json.dumps({**record, "storage": str(spec.folder.resolve() / "study.log")}))
    before = (spec.folder / "study.log").read_bytes()
    resumed = tune.prepare(None, resume=moved, trials=2)
    assert resumed.storage == str((moved / "study.log").absolute())
    load(moved).ask()
    assert (spec.folder / "study.log").read_bytes() == before  # the original study never saw the copy's trial
    assert len(load(moved).get_trials()) == 1


def test_resume_applies_more_trials_and_refuses_or_says_what_it_cannot_apply(tmp_path: Path, plugin_site) -> None:
    from deepcourse.studies import tune

    recipe = search_recipe(tmp_path)
    spec = tune.prepare(str(recipe), study_name="r", runs_root=tmp_path / "runs")
    assert tune.prepare(None, resume=spec.folder, trials=3).trials == 3  # more trials: safe, applied
    assert json.loads((spec.folder / "study.json").read_text())["trials"] == 3
    recipe.write_text(recipe.read_text().replace("trials = 1", "trials = 5"))
    with pytest.warns(RecipeWarning, match=r"search.trials: 1 -> 5 since the study began; the study keeps its "
                                           r"budget of 3 trials \(give --trials N with --resume"):
        tune.prepare(None, resume=spec.folder)
    recipe.write_text(recipe.read_text().replace("lr = 0.1", "lr = 0.2"))
    with pytest.raises(UserError, match="changed since the study began") as refused:
        tune.prepare(None, resume=spec.folder)
    assert refused.value.problems == ["optimizer.lr: 0.1 -> 0.2"]
    with pytest.raises(UserError, match="holds a study of another recipe") as joined:  # a worker joining by name
        tune.prepare(str(recipe), study_name="r", runs_root=tmp_path / "runs")
    assert "optimizer.lr: 0.1 -> 0.2" in joined.value.problems


def test_every_resume_runs_a_failed_or_stopped_point_again(tmp_path: Path) -> None:
    """A sweep told 'fix and continue with --resume' runs its failed points again, from the start when they never
    saved; a point stopped by Ctrl-C is no failure: it never uses up its retries."""
    import optuna

    from deepcourse.recipe.searchspace import Dimension
    from deepcourse.studies.spec import StudySpec
    from deepcourse.studies.study import MAX_RETRIES, open_study, recover

    points = [{"params": {"model.hidden": h}, "label": f"model.hidden={h}", "dir": f"00{i}"} for i, h in
              enumerate((4, 8))]
    spec = StudySpec(kind="sweep", folder=tmp_path, recipe=tmp_path / "r.toml", name="sweep",
                     storage=str(tmp_path / "study.log"), monitor="accuracy", direction="maximize", trials=2,
                     dims=[Dimension("model.hidden", "categorical", choices=(4, 8))], sampler="grid", points=points)
    study = open_study(spec, create=True)
    failed, stopped = study.ask(), study.ask()
    failed.set_user_attr("exit_code", 1)  # its run failed
    stopped.set_user_attr("stopped", True)
    stopped.set_user_attr("retries", MAX_RETRIES)
    for trial in (failed, stopped):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert recover(study, spec) == [0, 1]
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [(t.user_attrs["run_dir"], t.user_attrs["retries"]) for t in queued] == [("000", 1), ("001", MAX_RETRIES)]


# -- Ctrl-C -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_on_tune_saves_exits_130_and_resume_continues_with_more_trials(tmp_path: Path, cli_env) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the worker and its trial's run, from inside the run at step 2):
    the run saves, the worker takes no new trial and exits 130; then a crash cuts the journal's last record, and
    --resume --trials 2 resumes the stopped trial from its checkpoint and runs one more."""
    recipe = search_recipe(tmp_path, "callbacks = [{name = 'ctrl_c_at', step = 2}]")
    cmd = [sys.executable, "-m", "deepcourse", "tune", str(recipe), "--runs-root", str(tmp_path / "runs"),
           "--study", "c"]
    stopped = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=300,
                             start_new_session=True)  # its own process group: the Ctrl-C reaches nothing else
    folder = tmp_path / "runs" / "toysearch" / "study-c"
    assert stopped.returncode == 130, stopped.stderr
    assert "deepcourse: tune stopped by SIGINT" in stopped.stderr
    assert f"Continue with: deepcourse tune --resume {folder}" in stopped.stderr
    (trial,) = load(folder).get_trials()
    assert trial.state.name == "FAIL" and trial.user_attrs["stopped"] is True
    assert list((folder / "trial-0000" / "checkpoints").glob("step-*"))
    recipe.write_text(SEARCH.format(callbacks=""))  # a callback may change on resume; the next trial runs whole
    cut_last_record(folder / "study.log")
    resumed = run_cli(["tune", "--resume", str(folder), "--trials", "2"], cli_env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "its last record was cut short" in resumed.stderr
    done = [t for t in load(folder).get_trials() if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["run_dir"] for t in done) == ["trial-0000", "trial-0002"]
    assert "resuming" in (folder / "trial-0000.log").read_text()
    assert "2 of 2 trials finished" in (folder / "study.md").read_text()


@pytest.mark.slow
def test_a_run_stopped_on_its_own_stops_the_sweep_and_resume_finishes_it(tmp_path: Path, cli_env) -> None:
    """SIGINT to a point's run alone (not to the worker): the run saves and exits 130, the sweep starts no other
    point and exits 130 too; --resume resumes the point and runs the one that never started."""
    recipe = tmp_path / "search.toml"
    recipe.write_text(SEARCH.format(callbacks="callbacks = [{name = 'interrupt_at', step = 2}]"))
    args = ["sweep", str(recipe), "--grid", "model.hidden=4,8", "--runs-root", str(tmp_path / "runs")]
    stopped = run_cli(args, cli_env, timeout=300)
    assert stopped.returncode == 130, stopped.stderr
    (folder,) = (tmp_path / "runs" / "toysearch").glob("sweep-*")
    assert f"Continue with: deepcourse sweep --resume {folder}" in stopped.stderr
    assert list((folder / "000-model.hidden=4" / "checkpoints").glob("step-*"))
    assert not (folder / "001-model.hidden=8").exists()
    recipe.write_text(SEARCH.format(callbacks=""))
    resumed = run_cli(["sweep", "--resume", str(folder)], cli_env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in (folder / "000-model.hidden=4.log").read_text()
    assert (folder / "001-model.hidden=8" / "summary.json").exists()
