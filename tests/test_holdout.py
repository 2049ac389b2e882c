"""`data.holdout`: a part of train kept out, scored once with the best weights, never trained or selected on."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from core_support import TOY_RECIPE

import deepcourse
from deepcourse.api import ArrayDataset, DataError, holdout_indices, resolve_splits, splits_to_read
from deepcourse.cli.main import main
from deepcourse.errors import RecipeWarning


class Documents(ArrayDataset):
    """An ArrayDataset whose samples come in documents (like CoNLL sentences)."""

    def __init__(self, docs: list[int], x: torch.Tensor | None = None) -> None:
        super().__init__(x=torch.arange(len(docs)) if x is None else x)
        self.docs = docs

    def groups(self) -> list[int]:
        return self.docs

    def subset(self, indices: torch.Tensor) -> Documents:
        return Documents([self.docs[i] for i in indices.tolist()], self.arrays["x"][indices])


def test_the_holdout_is_the_last_whole_documents_and_never_depends_on_the_seed() -> None:
    docs = [0] * 4 + [1] * 3 + [2] * 2 + [3] * 1  # 10 samples; 20% is 2, but document 2 starts at 7
    keep, held = holdout_indices(10, 0.2, docs)
    assert held.tolist() == [7, 8, 9] and keep.tolist() == list(range(7))
    with pytest.warns(RecipeWarning, match="holds out a single document"):
        assert holdout_indices(10, 0.1, docs)[1].tolist() == [9]  # the last document alone
    with pytest.warns(RecipeWarning, match="cut inside it"):
        assert holdout_indices(10, 0.5, [0] * 10)[1].tolist() == [5, 6, 7, 8, 9]  # one document: cut inside it
    # without documents: a fixed draw, not the tail (image folders are sorted by class) and not the recipe's seed
    keep, held = holdout_indices(100, 0.1)
    assert len(held) == 10 and held.tolist() != list(range(90, 100))
    assert sorted(keep.tolist() + held.tolist()) == list(range(100))
    assert held.tolist() == holdout_indices(100, 0.1)[1].tolist()
    with pytest.raises(DataError, match="data.holdout=0.99 leaves no training samples out of 3"):
        holdout_indices(3, 0.99)


def test_resolve_splits_keeps_the_holdout_out_before_validation_is_carved() -> None:
    train = Documents([d for d in range(20) for _ in range(5)])  # 100 samples, 20 documents of 5
    out = resolve_splits({"train": train}, ["train", "validation", "holdout"], dataset="d", val_split=0.25, seed=3,
                         holdout=0.1)
    ids = {name: set(split.arrays["x"].tolist()) for name, split in out.items()}
    assert ids["holdout"] == set(range(90, 100))  # the last two documents
    assert not ids["holdout"] & (ids["train"] | ids["validation"]) and not ids["train"] & ids["validation"]
    assert len(ids["validation"]) == 22 and len(ids["train"]) == 68  # 25% of the 90 that remain
    for seed in (4, 5):  # another seed draws another validation split, and the same holdout
        again = resolve_splits({"train": train}, ["holdout"], dataset="d", val_split=0.25, seed=seed, holdout=0.1)
        assert set(again["holdout"].arrays["x"].tolist()) == ids["holdout"]
    assert splits_to_read(["holdout"], val_split=None, holdout=0.1) == ["train"]
    assert splits_to_read(["holdout"], val_split=None, holdout=None) == ["holdout"]  # a dataset's own, if any
    assert splits_to_read(["validation"], val_split=None, holdout=0.1) == ["validation"]
    assert splits_to_read(["train", "validation"], val_split=0.1, holdout=None) == ["train", "validation"]
    whole = resolve_splits({"train": train}, ["train"], dataset="d", val_split=None, seed=3, holdout=0)
    assert len(whole["train"]) == 100 and "holdout" not in whole  # data.holdout = 0: the final model sees all of train
    with pytest.raises(DataError, match="Set data.holdout"):
        resolve_splits({"train": train}, ["holdout"], dataset="d", val_split=None, seed=3)


@pytest.fixture(scope="module")
def holdout_run(plugin_site, tmp_path_factory: pytest.TempPathFactory) -> deepcourse.RunResult:
    folder = tmp_path_factory.mktemp("holdout")
    (folder / "toy.toml").write_text(TOY_RECIPE)
    return deepcourse.run(str(folder / "toy.toml"), "data.holdout=0.2", "train.epochs=2",
                          runs_root=str(folder / "runs"))


def test_a_run_scores_its_best_weights_on_the_holdout_once_at_the_end(holdout_run: deepcourse.RunResult) -> None:
    run = holdout_run.run_dir
    scored = json.loads((run / "holdout.json").read_text())
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert scored["split"] == "holdout" and scored["epoch"] == best["epoch"] and 0 <= scored["accuracy"] <= 1
    # toy_blobs' train is 3/4 of 203 samples: 152, and the holdout 20% of them, never trained on
    assert scored["num_samples"] == 30
    assert holdout_run.summary["holdout"] == scored
    assert not any(row.get("split") == "holdout" for row in holdout_run.history)  # nothing logged, nothing selected
    report = (run / "report" / "report.md").read_text()
    assert "## Holdout metrics (best weights, 30 samples kept out of train" in report
    # the same number again from the saved run, as `deepcourse evaluate --split holdout` gives it
    again = deepcourse.evaluate(run, split="holdout")
    assert again["accuracy"] == pytest.approx(scored["accuracy"]) and again["num_samples"] == 30


def test_the_holdout_shows_beside_validation_in_the_seeds_table(holdout_run: deepcourse.RunResult,
                                                                 tmp_path: Path) -> None:
    from deepcourse.cli.docgen import seed_results

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "seed-3").symlink_to(holdout_run.run_dir, target_is_directory=True)
    table = seed_results([str(sweep)])
    header, _, row = table.splitlines()[:3]
    assert "| holdout (mean ± std) | holdout 95% CI |" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7] == f"{100 * holdout_run.summary['holdout']['accuracy']:.2f} (n=1)"


def test_evaluating_on_the_holdout_is_never_selecting_on_it(plugin_site, toy_recipe: Path) -> None:
    result = CliRunner().invoke(main, ["check", str(toy_recipe), "--set", "eval.split=\"holdout\""])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "eval.split: 'holdout' is never selected on" in result.output


def test_a_holdout_that_cannot_mean_what_it_says_is_refused_or_named() -> None:
    with pytest.raises(DataError, match=r"data.holdout=0.001 of 48 training samples rounds to none \(0.048\)"):
        holdout_indices(48, 0.001)  # not one sample held out, silently made into one
    assert len(holdout_indices(48, 0.011)[1]) == 1  # 0.53 rounds to one: held out as asked
    with pytest.warns(RecipeWarning, match=r"data.holdout=0.5: train's first document runs past the cut \(sample 5 "
                                           r"of 10\), so the holdout is cut inside it"):
        holdout_indices(10, 0.5, [0] * 10)
    with pytest.warns(RecipeWarning, match=r"data.holdout=0.1 holds out a single document \(5 of 10 samples, 50%\)"):
        assert holdout_indices(10, 0.1, [0] * 5 + [1] * 5)[1].tolist() == [5, 6, 7, 8, 9]  # 10% asked, 50% kept out
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)
        holdout_indices(100, 0.1, [d for d in range(20) for _ in range(5)])  # two whole documents: nothing to say


def test_holdout_and_val_split_together_must_leave_training_data() -> None:
    train = Documents(list(range(10)))
    with pytest.raises(DataError, match=r"data.holdout=0.5 and data.val_split=0.95 leave no training samples: the "
                                        r"holdout keeps 5 out, and validation would take all 5 that remain"):
        resolve_splits({"train": train}, ["train", "validation"], dataset="d", val_split=0.95, seed=0, holdout=0.5)
    out = resolve_splits({"train": train}, ["train", "validation"], dataset="d", val_split=0.5, seed=0, holdout=0.5)
    assert len(out["train"]) == 3 and len(out["validation"]) == 2  # round(2.5) of the 5 that remain
