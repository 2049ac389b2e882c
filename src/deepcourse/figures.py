"""The figure toolkit every report draws with: the core's curves and comparisons, and the tasks' own figures.

One look for every chart (size, resolution, grid, no top/right spines) and one way to write a Markdown table, so a
lab report that mixes the core's curves with a plugin's confusion matrix reads as one document.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

FIGSIZE = (6.4, 4.0)
DPI = 120


@dataclass
class Figure:
    """A saved PNG for report.md: its section title, file name (in the report folder) and caption."""

    title: str
    file: str
    caption: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


#: the one look of every chart, applied while a figure is built and while it is drawn, never to the session's settings
STYLE: dict[str, Any] = {"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
         "figure.dpi": DPI, "savefig.bbox": "tight"}
#: the arguments of pyplot's `subplots` that lay out the axes; the others are the figure's
_LAYOUT_KEYS = ("sharex", "sharey", "squeeze", "width_ratios", "height_ratios", "subplot_kw", "gridspec_kw")


class Plotter:
    """The part of `matplotlib.pyplot` that reports draw with (`subplots`, `figure`, `close`), on matplotlib's object
    API: a figure made here belongs to no pyplot backend and is never shown by one, so a run in a notebook neither
    switches the session's backend (the user's `plt.show()` and inline plots keep working) nor leaves figures for
    the notebook to display twice. Figures are drawn by the Agg renderer when saved, as on a server."""

    def figure(self, **kwargs: Any) -> Any:
        """A `matplotlib.figure.Figure` in the toolkit's style (`Figure(**kwargs)`: figsize, dpi, layout...)."""
        return _styled_figure_class()(**kwargs)

    def subplots(self, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
        """(figure, axes) as `pyplot.subplots` returns them."""
        layout = {key: kwargs.pop(key) for key in _LAYOUT_KEYS if key in kwargs}
        fig = self.figure(**kwargs)
        return fig, fig.subplots(nrows, ncols, **layout)

    def close(self, fig: Any = None) -> None:
        """Release a figure: one of this toolkit's needs nothing; one made through pyplot (Optuna's plots) is closed
        there, without importing pyplot when nothing did."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None and fig is not None:
            plt.close(fig)


def pyplot() -> Plotter:
    """What reports draw with: `plt = pyplot(); fig, ax = plt.subplots(...); fig.savefig(path); plt.close(fig)`,
    on `matplotlib.figure.Figure` (see `Plotter`), leaving the session's pyplot, backend and rcParams alone."""
    return Plotter()


@functools.cache
def _styled_figure_class() -> type:
    """`matplotlib.figure.Figure` that builds its axes and saves itself in STYLE (made on first use: importing this
    module does not import matplotlib)."""
    from matplotlib.figure import Figure as MplFigure

    class StyledFigure(MplFigure):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with _in_style():
                super().__init__(*args, **kwargs)

        def add_subplot(self, *args: Any, **kwargs: Any) -> Any:  # subplots() and colorbars come through these two
            with _in_style():
                return super().add_subplot(*args, **kwargs)

        def add_axes(self, *args: Any, **kwargs: Any) -> Any:
            with _in_style():
                return super().add_axes(*args, **kwargs)

        def savefig(self, *args: Any, **kwargs: Any) -> None:  # ticks and grid lines are made when drawn
            with _in_style():
                super().savefig(*args, **kwargs)

    return StyledFigure


def _in_style() -> Any:
    """matplotlib's rc_context with STYLE: the settings for what is made inside it, restored on leaving."""
    from matplotlib import rc_context

    return rc_context(cast(Any, STYLE))  # matplotlib types its keys as literals: STYLE holds only real ones


def integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def nice(name: str) -> str:
    return name.replace("_", " ")


def save_figure(fig: Any, out: Path, file: str, title: str, caption: str) -> Figure:
    """Save `fig` as out/file (epoch axes get integer ticks), close it, and describe it for report.md."""
    out.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            integer_epochs(ax)
    fig.savefig(out / file)
    pyplot().close(fig)
    return Figure(title, file, caption)


def grouped_bars(path: Path, groups: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
                 xlabel: str, ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.0),
                 max_labelled_bars: int = 48, total_last: bool = False, decimals: int = 2) -> None:
    """Save a bar chart of several series side by side per group (precision / recall / F1 per entity type, accuracy
    per class...), with each bar's value written on it, so tasks' score charts look and read the same.

    The figure widens with the number of bars (up to 16 inches) instead of squeezing them, and the legend sits
    outside the axes, where it cannot hide a bar near 1.0. `total_last`: the last group is a total (a micro
    average), set apart by a dashed line so it is not read as one more class. `decimals`: of the value labels.
    """
    plt = pyplot()
    n_series = max(len(series), 1)
    width = min(16.0, max(FIGSIZE[0], 1.8 + len(groups) * (0.3 * n_series + 0.35)))
    long_labels = max((len(line) for g in groups for line in g.split("\n")), default=0) * len(groups) > width * 9
    fig, ax = plt.subplots(figsize=(width, FIGSIZE[1] + (0.8 if long_labels else 0.0)))
    bar = 0.8 / n_series
    labelled = len(groups) * n_series <= max_labelled_bars
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n_series - 1) / 2) * bar for g in range(len(groups))]
        bars = ax.bar(xs, values, bar, label=name, color=f"C{i % 10}")
        if labelled:
            ax.bar_label(bars, labels=["0" if v == 0 else f"{v:.{decimals}f}" for v in values], fontsize=7, padding=1,
                         rotation=90 if n_series * len(groups) > 24 else 0)
    if total_last and len(groups) > 1:
        ax.axvline(len(groups) - 1.5, color="grey", ls="--", lw=1)
    ax.set_xticks(range(len(groups)), groups, rotation=90 if long_labels else 0)
    ax.grid(axis="x", visible=False)
    if ylim is not None:
        rotated = labelled and n_series * len(groups) > 24
        # room for the value labels above a full bar: vertical labels ("1.000") need more than horizontal ones
        ax.set_ylim(ylim[0], ylim[1] * ((1.15 if rotated else 1.08) if labelled else 1.0))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def heatmap(path: Path, values: Any, rows: Sequence[str], columns: Sequence[str], *, title: str, xlabel: str,
            ylabel: str, colorbar: str, cmap: str = "Blues", vmin: float | None = None, vmax: float | None = None,
            annotations: Sequence[Sequence[str]] | None = None, marks: Any = None, mark_label: str = "") -> None:
    """Save a labelled matrix (a confusion matrix, a CRF's transition scores) with a colour bar saying what the colour
    means, so every task's matrices read alike. `values` [rows, columns] may hold NaN for cells that do not exist
    (drawn blank). `annotations`: text per cell ("" for none), in black or white for contrast. `marks`: a boolean
    matrix of cells to flag with a small cross (impossible transitions), explained under the axis by `mark_label`."""
    import numpy as np

    plt = pyplot()
    data = np.ma.masked_invalid(np.asarray(values, dtype=float))
    side = 2.5 + 0.42 * max(len(rows), len(columns))
    fig, ax = plt.subplots(figsize=(min(14.0, side + 1.2), min(12.0, 1.5 + 0.42 * len(rows) + 1.0)))
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.grid(False)
    ax.set_xticks(range(len(columns)), columns, rotation=45 if max(map(len, columns), default=0) > 2 else 0,
                  ha="right" if max(map(len, columns), default=0) > 2 else "center")
    ax.set_yticks(range(len(rows)), rows)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(image, ax=ax, label=colorbar, fraction=0.046, pad=0.04)
    low, high = image.norm.vmin, image.norm.vmax
    blank = np.ma.getmaskarray(data)
    for i in range(len(rows)):
        for j in range(len(columns)):
            text = annotations[i][j] if annotations is not None else ""
            if text and not blank[i, j]:
                share = (float(data[i, j]) - low) / (high - low) if high > low else 0.0
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if share > 0.6 else "black")
    if marks is not None and np.asarray(marks).any():
        ys, xs = np.nonzero(np.asarray(marks))
        ax.scatter(xs, ys, marker="x", s=14, color="crimson", linewidths=1)
        if mark_label:
            ax.set_xlabel(f"{xlabel}\n(\u00d7: {mark_label})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Lines of a Markdown table; cells are written with `str` (format numbers first) and must not hold `|`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#"})


def markdown_escape(text: str) -> str:
    """Text (a token, a class name) shown literally in Markdown, table cells included: `*`, `_`, `|`... escaped."""
    return text.translate(_MARKDOWN_SPECIAL)
