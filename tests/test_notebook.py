"""deepcourse in a notebook: progress bars where a person watches (a terminal, a Jupyter kernel) and none in logs,
figures that leave the session's matplotlib alone, what `run`, `lr_find` and `explain` return shown inline, and the
example notebook executed in a real kernel (nbclient) with a bar and the run's figure in its saved outputs."""
from __future__ import annotations

import io
import re
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest
from core_support import TOY_RECIPE

import deepcourse
from deepcourse.api import UserError
from deepcourse.training import progress

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "notebooks" / "quickstart.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def fake_kernel(monkeypatch: pytest.MonkeyPatch, widgets: bool = False) -> None:
    """This process seen as a Jupyter kernel: IPython's shell with a kernel, as in a notebook."""
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setattr(progress, "has_widgets", lambda: widgets)


@pytest.mark.parametrize(("tty", "kernel", "forced", "show", "kind"), [
    (True, False, "", True, "text"),  # a terminal
    (False, False, "", True, "off"),  # a CI log, output piped to a file
    (False, False, "1", True, "text"),  # ... unless forced on
    (True, False, "0", True, "off"),  # forced off
    (False, True, "", True, "text"),  # a notebook without ipywidgets: tqdm's text bar, which it shows
    (True, False, "1", False, "off"),  # train.progress = false wins
])
def test_where_bars_show(monkeypatch: pytest.MonkeyPatch, tty: bool, kernel: bool, forced: str, show: bool,
                         kind: str) -> None:
    monkeypatch.setattr(sys, "stderr", Stream(tty))
    monkeypatch.setenv(progress.PROGRESS_ENV, forced)
    if kernel:
        fake_kernel(monkeypatch)
    assert progress.kind_of_bar(show) == kind
    bar = progress.bar(range(3), show=show, desc="x")
    assert bar.disable == (kind == "off")
    assert list(bar) == [0, 1, 2]  # a disabled bar still iterates
    assert ("x: 100%|" in sys.stderr.getvalue()) == (kind == "text")


def test_a_notebook_with_ipywidgets_gets_the_widget_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    fake_kernel(monkeypatch, widgets=True)
    assert progress.kind_of_bar() == "widget"


def test_a_run_in_a_notebook_kernel_shows_its_epoch_bar(plugin_site, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """tqdm.auto with disable=None showed nothing in a kernel (its stream is no terminal): the bar is drawn."""
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    fake_kernel(monkeypatch)
    err = Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", err)
    deepcourse.run(tomllib.loads(TOY_RECIPE), "train.progress=true", "train.epochs=1", runs_root=tmp_path,
                   report=False)
    assert "epoch 1/1:" in err.getvalue() and "%|" in err.getvalue()
    assert "eval validation:" in err.getvalue()


def test_a_run_leaves_the_sessions_matplotlib_alone(plugin_site, tmp_path: Path) -> None:
    """The report is drawn on matplotlib's object API: the backend, the rcParams and pyplot's figures are the user's
    as before (forcing Agg made a notebook's own plt.show() draw nothing)."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    rc = dict(matplotlib.rcParams)
    try:
        result = deepcourse.run(tomllib.loads(TOY_RECIPE), "train.epochs=1", runs_root=tmp_path)
        assert result.report is not None and (result.run_dir / "report" / "loss.png").stat().st_size > 5_000
        assert matplotlib.get_backend() == "svg"
        assert {k: v for k, v in matplotlib.rcParams.items() if v != rc[k]} == {}
        if "matplotlib.pyplot" in sys.modules:
            assert sys.modules["matplotlib.pyplot"].get_fignums() == []
    finally:
        matplotlib.use(before)


@pytest.fixture(scope="module")
def toy_run(plugin_site, tmp_path_factory: pytest.TempPathFactory) -> deepcourse.RunResult:
    folder = tmp_path_factory.mktemp("notebook")
    return deepcourse.run(tomllib.loads(TOY_RECIPE), "train.epochs=3", "data.holdout=0.2", runs_root=folder,
                          report=False)


def test_a_run_result_shows_its_curves_and_key_numbers(toy_run: deepcourse.RunResult) -> None:
    best = toy_run.best
    fig = toy_run.curves()
    loss, accuracy = fig.axes  # the loss and the monitored metric, side by side
    assert [line.get_label() for line in accuracy.lines] == ["train", "validation", f"best (epoch {best['epoch']})"]
    assert list(accuracy.lines[1].get_ydata()) == toy_run.series("validation", "accuracy")[1]
    assert len(accuracy.lines[1].get_ydata()) == 3 and loss.get_title() == "toy: loss"
    assert toy_run._repr_png_().startswith(PNG_MAGIC)
    page = toy_run._repr_html_()
    assert '<img src="data:image/png;base64,' in page
    assert f"<b>{best['accuracy']:.4f}</b> at epoch {best['epoch']}" in page
    holdout = toy_run.summary["holdout"]
    assert f"holdout ({holdout['num_samples']} samples)" in page and f"accuracy {holdout['accuracy']:.4f}" in page
    text = repr(toy_run)  # a terminal: one line, not every logged event
    assert text.startswith("RunResult(run_dir=") and "history" not in text and len(text) < 300


def test_lr_find_from_python_returns_its_numbers_and_figure(plugin_site, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    found = deepcourse.lr_find(tomllib.loads(TOY_RECIPE), "train.threads=1", steps=30, end_lr=1.0)
    assert len(found.result.lrs) == 30 and found.suggestion == found.result.suggestion is not None
    assert found.folder is None and list(tmp_path.iterdir()) == []  # nothing written unless asked
    assert found._repr_png_().startswith(PNG_MAGIC) and repr(found) == found.result.summary()
    assert found.figure().axes[0].get_title() == "toy: learning-rate range test"
    kept = deepcourse.lr_find(tomllib.loads(TOY_RECIPE), steps=20, output="found")
    assert sorted(p.name for p in (tmp_path / "found").iterdir()) == ["lr_find.csv", "lr_find.json", "lr_find.png"]
    assert kept.folder == Path("found")
    with pytest.raises(UserError, match="--start-lr 1 must be below --end-lr 0.1"):
        deepcourse.lr_find(tomllib.loads(TOY_RECIPE), start_lr=1.0, end_lr=0.1)


def test_explain_from_python_shows_the_figures_inline(tmp_path: Path) -> None:
    """The quickstart's CNN, a few steps trained, explained on one digit: the figures explain wrote, embedded."""
    from PIL import Image

    run = deepcourse.run("quickstart", "train.max_steps=2", "scheduler.name=constant", runs_root=tmp_path,
                         report=False)
    digit = tmp_path / "digit.png"
    Image.fromarray((np.eye(8) * 255).astype(np.uint8)).save(digit)
    explained = deepcourse.explain(run.run_dir, digit, steps=4)
    assert explained.folder == run.run_dir / "explain" and (explained.folder / "explain.md").is_file()
    assert explained.images and all(path.is_file() for path in explained.images)
    assert [n["input"] for n in explained.numbers if n.get("input") is not None] == [str(digit)]
    page = explained._repr_html_()
    assert page.count('<img src="data:image/png;base64,') == len(explained.images)


@pytest.mark.slow  # a kernel, torch and a three-epoch run: about a minute on two busy cores
def test_the_quickstart_notebook_runs_with_a_bar_and_inline_figures(tmp_path: Path) -> None:
    """The notebook as a reader runs it (nbclient, a real ipykernel): its saved outputs hold the training bar (tqdm's
    text bar, or its widget where ipywidgets is installed) and the run's figure, inline, as the cell's value."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells)  # committed without outputs
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    run_cell = next(c for c in notebook.cells if c.cell_type == "code" and "deepcourse.run(" in c.source)
    bar_text = "".join(o.get("text", "") for o in run_cell.outputs if o.output_type == "stream")
    widgets = [o for o in run_cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets or re.search(r"epoch 3/3: 100%\|█+\| (\d+)/\1 ", bar_text)
    shown = [o for o in run_cell.outputs if o.output_type == "execute_result"]
    assert len(shown) == 1 and {"image/png", "text/html"} <= set(shown[0].data)
    lr_cell = next(c for c in notebook.cells if c.cell_type == "code" and "deepcourse.lr_find(" in c.source)
    assert any("image/png" in o.get("data", {}) for o in lr_cell.outputs)
    assert list((tmp_path / "runs" / "quickstart").iterdir())  # the run went beside the notebook
