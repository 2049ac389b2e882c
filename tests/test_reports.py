"""report, compare and sweep on tiny toy runs: the files exist, the PNGs open, the tables hold real metrics."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from core_support import run_cli


def png_size(path: Path) -> tuple[int, int]:
    import matplotlib.image as mpimg

    height, width = mpimg.imread(path).shape[:2]
    return width, height


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, cli_env) -> list[Path]:
    from core_support import TOY_RECIPE

    folder = tmp_path_factory.mktemp("runs")
    recipe = folder / "toy.toml"
    recipe.write_text(TOY_RECIPE)
    runs = []
    for dropout in (0.0, 0.3):
        run = folder / f"d{dropout}"
        out = run_cli(["run", str(recipe), "--run-dir", str(run), "--set", f"model.dropout={dropout}"], cli_env)
        assert out.returncode == 0, out.stderr
        runs.append(run)
    return runs


@pytest.mark.slow
def test_run_writes_a_report_with_readable_plots(two_runs: list[Path]) -> None:
    report = two_runs[0] / "report"
    md = (report / "report.md").read_text()
    best = json.loads((two_runs[0] / "best" / "metrics.json").read_text())
    assert f"| accuracy | {best['accuracy']:.4f} |" in md
    for name in ("loss.png", "accuracy.png", "lr.png", "samples_per_s.png"):
        assert f"]({name})" in md
        width, height = png_size(report / name)
        assert 600 <= width <= 1000 and 350 <= height <= 700, (name, width, height)
    assert "```toml" in md and 'name = "toy_mlp"' in md


@pytest.mark.slow
def test_report_command_rebuilds_the_report(two_runs: list[Path], cli_env) -> None:
    import shutil

    shutil.rmtree(two_runs[1] / "report")
    out = run_cli(["report", str(two_runs[1])], cli_env)
    assert out.returncode == 0, out.stderr
    assert (two_runs[1] / "report" / "report.md").exists()


@pytest.mark.slow
def test_compare_labels_runs_by_their_differences(two_runs: list[Path], tmp_path: Path, cli_env) -> None:
    out_dir = tmp_path / "cmp"
    out = run_cli(["compare", *map(str, two_runs), "-o", str(out_dir)], cli_env)
    assert out.returncode == 0, out.stderr
    md = (out_dir / "compare.md").read_text()
    assert "model.dropout=0.0" in md and "model.dropout=0.3" in md
    rows = list(csv.DictReader(open(out_dir / "compare.csv")))
    for row, run in zip(rows, two_runs):
        summary = json.loads((run / "summary.json").read_text())
        assert float(row["best accuracy"]) == pytest.approx(summary["best"]["accuracy"])
        assert int(row["parameters"]) == summary["num_parameters"]
        trained = sum(r["seconds"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                      if r.get("split") == "train" and r.get("scope") == "epoch")
        assert float(row["train time per step (ms)"]) == pytest.approx(1000 * trained / summary["steps"], abs=0.01)
    for name in ("compare_loss.png", "compare_accuracy.png"):
        width, height = png_size(out_dir / name)
        assert width > 600 and height > 350


@pytest.mark.slow
def test_interrupted_sweep_resumes(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    args = ["sweep", str(toy_recipe), "--grid", "model.hidden=8,16", "--runs-root", str(tmp_path),
            "--set", "train.checkpoint_every=2", "--set", "train.callbacks=[{name = 'interrupt_at', step = 5}]"]
    first = run_cli(args, cli_env)
    assert first.returncode == 130  # a run was interrupted (Ctrl-C after its step 5): the sweep stops there, saved
    assert "Continue with: deepcourse sweep --resume" in first.stderr
    folder = next((tmp_path / "toy").glob("sweep-*"))
    # each --resume continues the stopped run past its stop; a run started afresh stops at its own step 5 again
    codes = [run_cli(["sweep", "--resume", str(folder)], cli_env).returncode for _ in range(3)]
    assert codes[-1] == 0 and set(codes[:-1]) <= {0, 130}, codes
    logs = [(folder / f"{d}.log").read_text() for d in ("000-model.hidden=8", "001-model.hidden=16")]
    assert all("resuming" in log for log in logs)  # both were stopped once and resumed from their checkpoint
    md = (folder / "compare.md").read_text()
    assert "model.hidden=8" in md and "model.hidden=16" in md
    again = run_cli(["sweep", "--resume", str(folder)], cli_env)  # nothing left to do: finished runs are kept
    assert again.returncode == 0
    assert [(folder / f"{d}.log").read_text().count("resuming") for d in ("000-model.hidden=8",
                                                                          "001-model.hidden=16")] == [1, 1]


@pytest.mark.slow
def test_sweep_with_seeds_reports_mean_and_spread(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    out = run_cli(["sweep", str(toy_recipe), "--grid", "model.dropout=0,0.5", "--seeds", "2", "--runs-root",
                   str(tmp_path), "--set", "train.epochs=1", "-j", "2"], cli_env)
    assert out.returncode == 0, out.stderr
    folder = next((tmp_path / "toy").glob("sweep-*"))
    md = (folder / "compare.md").read_text()
    assert "| model.dropout=0 | 2 |" in md and "±" in md
    rows = list(csv.DictReader(open(folder / "compare.csv")))
    assert len(rows) == 2 and "best accuracy sd" in rows[0]


@pytest.mark.slow
def test_sweep_grid_from_the_recipe(tmp_path: Path, toy_recipe: Path, cli_env) -> None:
    text = toy_recipe.read_text().replace("[train]\nepochs = 3", "[train]\nepochs = 1")
    text += '\n[sweep]\ngrid = {"optimizer" = [{name = "sgd", lr = 0.05}, {name = "adam", lr = 0.01}]}\n'
    recipe = tmp_path / "ablation.toml"
    recipe.write_text(text)
    out = run_cli(["sweep", str(recipe), "--runs-root", str(tmp_path)], cli_env)
    assert out.returncode == 0, out.stderr
    md = (next((tmp_path / "toy").glob("sweep-*")) / "compare.md").read_text()
    assert "optimizer={name=sgd lr=0.05}" in md and "optimizer={name=adam lr=0.01}" in md


@pytest.mark.slow
def test_results_table_comes_from_the_runs_files(two_runs: list[Path]) -> None:
    from deepcourse.cli.docgen import results

    rows = results([str(r) for r in two_runs]).splitlines()[2:]
    for run, row in zip(two_runs, rows, strict=True):
        summary = json.loads((run / "summary.json").read_text())
        cells = row.strip("| ").split(" | ")
        metric, value = cells[4], cells[5]
        assert value == f"{summary['best'][metric] * 100:.2f}%"
        assert cells[-1] == f"{summary['wall_time_s']} s"


def test_a_garbage_line_in_metrics_jsonl_is_skipped_with_a_warning_naming_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A line that is not a JSON object, in the middle or cut short at the end, is named and skipped; every line
    after it is still read (it used to end the log there, silently)."""
    from deepcourse.rundir.layout import read_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text('name = "r"\n[task]\nname = "toy-classification"\n')
    rows = [{"event": i, "epoch": i, "step": i, "split": "validation", "scope": "epoch", "accuracy": i / 10}
            for i in (1, 2, 3)]
    lines = [json.dumps(rows[0]), "oops, an editor was here", json.dumps(rows[1]), "[1, 2]", json.dumps(rows[2]),
             '{"event": 4, "ep']
    (run / "metrics.jsonl").write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="deepcourse"):
        assert read_run(run).rows == rows
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("deepcourse")]
    path = run / "metrics.jsonl"
    assert said[0].startswith(f"{path}:2: not valid JSON (Expecting value at column 1); skipped: 'oops, an editor")
    assert said[1].startswith(f"{path}:4: a JSON list, not an object; skipped")
    assert said[2].startswith(f"{path}:6: not valid JSON (Unterminated string")
    assert len(said) == 3


# -- issue 25: the seeds table counts seeds, and only seeds ----------------------------------------------------------
def fake_run(folder: Path, seed: int, dropout: float, accuracy: float) -> Path:
    """A finished run as the seeds table reads it: its recipe and summary (nothing trained)."""
    folder.mkdir(parents=True)
    (folder / "recipe.toml").write_text(f'name = "toy"\nseed = {seed}\n[task]\nname = "toy-classification"\n[data]\n'
                                        f'name = "toy_blobs"\n[model]\nname = "toy_mlp"\ndropout = {dropout}\n')
    (folder / "summary.json").write_text(json.dumps({"best": {"accuracy": accuracy}, "monitor": "accuracy",
                                                     "epochs": 2, "wall_time_s": 1.0}))
    return folder


def test_the_seeds_table_of_a_grid_sweep_has_a_row_per_configuration(tmp_path: Path) -> None:
    """A grid sweep over dropout with two seeds each: two rows of n=2 (not one of n=4), each named by its
    configuration, and a line that says so."""
    from deepcourse.cli.docgen import seed_results

    for i, (dropout, seed, accuracy) in enumerate([(0.0, 1, 0.90), (0.0, 2, 0.92), (0.5, 1, 0.80), (0.5, 2, 0.84)]):
        fake_run(tmp_path / "sweep" / f"{i:03d}", seed, dropout, accuracy)
    table = seed_results([str(tmp_path / "sweep")])
    rows = [line for line in table.splitlines() if line.startswith("| toy")]
    assert len(rows) == 2, table
    assert rows[0].startswith("| toy (model.dropout=0.0) |") and "| 91.00 ± 1.41 (n=2) |" in rows[0]
    assert rows[1].startswith("| toy (model.dropout=0.5) |") and "| 82.00 ± 2.83 (n=2) |" in rows[1]
    assert "One row per configuration (2: model.dropout=0.0; model.dropout=0.5)" in table


def test_an_accuracy_interval_never_passes_100_percent(tmp_path: Path) -> None:
    from deepcourse.cli.docgen import seed_results

    for i, accuracy in enumerate([0.99, 1.0, 0.995]):
        fake_run(tmp_path / "sweep" / f"{i:03d}", i + 1, 0.0, accuracy)
    row = seed_results([str(tmp_path / "sweep")]).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    low, high = (float(x) for x in cells[6].strip("[]").split(", "))
    assert high == 100.0 and 0 < low < 99.5, cells  # Student's t alone reaches 100.74


def test_the_seeds_table_refuses_to_count_a_run_or_a_folder_twice(tmp_path: Path, capsys) -> None:
    from deepcourse.cli.docgen import main

    fake_run(tmp_path / "sweep" / "000", 1, 0.0, 0.9)
    fake_run(tmp_path / "sweep" / "000-copy", 1, 0.0, 0.9)
    assert main(["seeds", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert f"deepcourse: error: docgen seeds: {tmp_path / 'sweep' / '000'} and {tmp_path / 'sweep' / '000-copy'} " \
           "are the same configuration with the same seed (1)" in err and "Traceback" not in err
    (tmp_path / "sweep" / "000-copy" / "summary.json").unlink()
    fake_run(tmp_path / "sweep" / "001", 2, 0.0, 0.92)
    assert main(["seeds", str(tmp_path / "sweep"), f"{tmp_path}/./sweep/"]) == 2
    assert "are the same folder; give each once (its runs would count twice)" in capsys.readouterr().err
    for args, said in ((["seeds", str(tmp_path / "nowhere")], "nowhere: no such folder"),
                       (["seeds", str(tmp_path / "sweep" / "001")], "001 is one run; give the sweep folder"),
                       (["seeds", "--split"], "docgen seeds --split: give a split name"),
                       (["seeds"], "docgen seeds: give one or more sweep folders")):
        assert main(args) == 2 and said in capsys.readouterr().err, args
    assert main(["seeds", str(tmp_path / "sweep")]) == 0 and "(n=2)" in capsys.readouterr().out
