"""A run never loses a file it owns, and a run's weights are never swapped without a word.

Output options (`-o`, `--write-predictions`, `--run-dir`, `--runs-root`) may create new files inside a run, never
write over its own (the bad-input corpus refuses those, case by case); here: what is still allowed, an existing
file of the user's inside a run, a link that leads into a run, a project folder that merely holds a recipe, the list
of names a run owns, and the weights `evaluate` falls back to (previous best/, older checkpoint) named in a warning.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from core_support import TOY_RECIPE

import deepcourse
from deepcourse.cli.main import main
from deepcourse.errors import RecipeWarning, UserError
from deepcourse.rundir.outputs import RUN_OWNED, writable_file, writable_folder

POINT = "0,0,0,0,0,0,0,0"


@pytest.fixture(scope="module")
def finished(plugin_site, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy run with everything a run writes: checkpoints, best/, the holdout score and the report."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "toy.toml").write_text(TOY_RECIPE)
    return deepcourse.run(str(folder / "toy.toml"), "data.holdout=0.2", "train.epochs=1",
                          run_dir=str(folder / "run")).run_dir


@pytest.fixture()
def run(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def cli(*args: object) -> tuple[int, str]:
    out = CliRunner().invoke(main, [str(a) for a in args])
    return out.exit_code, out.output


def test_every_name_a_finished_run_holds_is_one_it_owns(finished: Path) -> None:
    names = {p.name for p in finished.iterdir() if not p.name.startswith(".")}
    assert {"recipe.toml", "best", "checkpoints", "holdout.json", "report"} <= names  # the fixture wrote them all
    assert names <= RUN_OWNED, names - RUN_OWNED


def test_a_new_file_inside_a_run_is_written_once_and_never_replaced(run: Path) -> None:
    recipe = (run / "recipe.toml").read_bytes()
    code, out = cli("predict", run, POINT, "-o", run / "mine.txt")
    assert code == 0, out
    first = (run / "mine.txt").read_text()
    code, out = cli("predict", run, "1,1,1,1,1,1,1,1", "-o", run / "mine.txt")
    assert code == 2 and f"-o {run / 'mine.txt'}: already exists inside run {run}, and a file in a run is never " \
        "replaced" in out
    assert (run / "mine.txt").read_text() == first and (run / "recipe.toml").read_bytes() == recipe
    other = run.parent / "other"  # compare needs two runs: a copy of this one (before it holds mine.txt's kin)
    shutil.copytree(run, other)
    code, out = cli("compare", run, other, "-o", run / "comparison")  # a new folder inside the run: allowed
    assert code == 0, out
    assert (run / "comparison" / "compare.md").is_file()


def test_a_link_that_leads_into_a_run_is_replaced_not_followed(run: Path, tmp_path: Path) -> None:
    recipe = (run / "recipe.toml").read_bytes()
    link = tmp_path / "predictions.txt"
    link.symlink_to(run / "recipe.toml")
    code, out = cli("predict", run, POINT, "-o", link)
    assert code == 0, out
    assert not link.is_symlink() and (run / "recipe.toml").read_bytes() == recipe
    into = tmp_path / "into"
    into.symlink_to(run, target_is_directory=True)  # a folder link: where files would really go is the run
    with pytest.raises(UserError, match="is run .*'s own recipe.toml"):
        writable_file(into / "recipe.toml", "-o")
    with pytest.raises(UserError, match="is the run directory .* itself"):
        writable_folder(into, "-o")


def test_a_folder_holding_a_recipe_is_no_run(tmp_path: Path) -> None:
    (tmp_path / "recipe.toml").write_text(TOY_RECIPE)  # `deepcourse check quickstart > recipe.toml`
    (tmp_path / "out.txt").write_text("old")
    assert writable_file(tmp_path / "out.txt", "-o") == tmp_path / "out.txt"
    assert writable_folder(tmp_path, "-o") == tmp_path


def test_the_previous_best_weights_are_used_with_a_warning(run: Path) -> None:
    (run / "best").rename(run / ".best.old")  # a crash while best/ was being replaced
    with pytest.warns(RecipeWarning, match=rf"{run / 'best'} is missing .*using the previous best weights in "
                                           rf"{run / '.best.old'}"):
        metrics = deepcourse.evaluate(run)
    assert 0 <= metrics["accuracy"] <= 1


def test_an_incomplete_newest_checkpoint_is_named_when_latest_is_evaluated(run: Path) -> None:
    (complete,) = (run / "checkpoints").iterdir()
    newer = run / "checkpoints" / "step-000999999"
    shutil.copytree(complete, newer)
    (newer / "trainer_state.json").unlink()  # cut off before its last file
    with pytest.warns(RecipeWarning, match=rf"{newer} is incomplete .*using the latest complete checkpoint, "
                                           rf"{complete}"):
        deepcourse.evaluate(run, checkpoint="latest")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)
        shutil.rmtree(newer)
        deepcourse.evaluate(run, checkpoint="latest")  # the newest is complete: not a word
        deepcourse.evaluate(run)


def test_an_empty_data_dir_is_refused_and_a_hidden_file_does_not_fill_it(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / ".DS_Store").write_text("")
    code, out = cli("evaluate", run, "--data-dir", folder)
    assert code == 2 and f"--data-dir {folder}: the folder is empty" in out
