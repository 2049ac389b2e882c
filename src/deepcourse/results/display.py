"""What the Python API returns, shown inline when it is a notebook cell's value: a run's curves and key numbers
(`RunResult`), a learning-rate range test (`LRFind`), explanations (`Explained`).

Jupyter asks an object for `_repr_html_` / `_repr_png_` and shows the richest; a terminal or a script sees the short
`repr`. The figures are drawn on matplotlib's object API (`deepcourse.figures.pyplot`), never through the session's
pyplot, and embedded as PNG, so they show without `%matplotlib inline` and the user's own plots are left alone.
"""
from __future__ import annotations

import base64
import html
import io
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepcourse.figures import FIGSIZE, integer_epochs, nice, pyplot
from deepcourse.recipe.schema import HOLDOUT
from deepcourse.task import Explanation
from deepcourse.training.lrfind import LRFindResult, draw

#: keys of a metrics record that are not metrics
_NOT_SHOWN = ("epoch", "step", "num_samples", "split", "scope", "event")


def png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    return buffer.getvalue()


def img_tag(data: bytes, alt: str) -> str:
    return (f'<img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" alt="{html.escape(alt)}" '
            f'style="max-width: 100%">')


def number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "?"


def html_table(rows: Iterable[tuple[str, str]]) -> str:
    """Two columns, the first a header; cells are HTML already."""
    return "<table>" + "".join(f'<tr><th style="text-align: left">{k}</th><td style="text-align: left">{v}</td></tr>'
                               for k, v in rows) + "</table>"


@dataclass(repr=False)
class RunResult:
    """A finished run: its folder, the best evaluation's metrics, every logged event, and summary.json. As a
    notebook cell's value it shows its curves (loss, the monitored metric, the best epoch marked) and its key
    numbers; `curves()` gives the figure itself."""

    run_dir: Path
    best: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    report: Path | None = field(default=None)

    @property
    def name(self) -> str:
        return str(self._recipe().get("name", self.run_dir.parent.name))

    @property
    def monitor(self) -> str:
        return str(self.summary.get("monitor", "loss"))

    @property
    def eval_split(self) -> str:
        split = self._recipe().get("eval", {}).get("split")
        found = [r["split"] for r in self.history if r.get("scope") == "epoch" and r.get("split") not in
                 ("train", HOLDOUT, None)]
        return str(split or (found[0] if found else "validation"))

    def series(self, split: str, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of `key` logged for `split` at the end of each epoch."""
        points = [(r["epoch"], r[key]) for r in self.history if r.get("split") == split and
                  r.get("scope", "epoch") == "epoch" and isinstance(r.get(key), (int, float))]
        return [p[0] for p in points], [float(p[1]) for p in points]

    def curves(self) -> Any:
        """A `matplotlib.figure.Figure`: the loss per epoch (training and evaluation), and the monitored metric
        when it is not the loss, with the best epoch marked."""
        split, best_epoch = self.eval_split, self.best.get("epoch")
        panels = [("loss", "loss")] + ([(self.monitor, nice(self.monitor))] if self.monitor != "loss" else [])
        width = FIGSIZE[0] * (1.7 if len(panels) > 1 else 1.0)
        fig, axes = pyplot().subplots(1, len(panels), figsize=(width, FIGSIZE[1] * 0.9), squeeze=False)
        for ax, (key, label) in zip(axes[0], panels, strict=True):
            for which, style, colour in (("train", "o-", "tab:blue"), (split, "s-", "tab:orange")):
                epochs, values = self.series(which, key)
                if epochs:
                    ax.plot(epochs, values, style, color=colour, ms=4, label=which)
            if isinstance(best_epoch, int):
                ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best (epoch {best_epoch})")
            ax.set(title=f"{self.name}: {label}", xlabel="epoch", ylabel=label)
            integer_epochs(ax)
            if ax.lines:
                ax.legend(fontsize=8)
        return fig

    def key_numbers(self) -> list[tuple[str, str]]:
        """(label, value) rows: the monitored metric at the best epoch, the other headline metrics, the holdout's,
        and the run's size and time."""
        rows = [("run", f"<code>{html.escape(str(self.run_dir))}</code>")]
        if self.monitor in self.best:
            rows.append((f"best {html.escape(self.monitor)} ({html.escape(self.eval_split)})",
                         f"<b>{number(self.best[self.monitor])}</b> at epoch {number(self.best.get('epoch', '?'))}"))
        headline = [m for m in self.summary.get("headline", []) if m != self.monitor and m in self.best]
        rows += [(html.escape(f"{m} at the best epoch"), number(self.best[m])) for m in headline]
        holdout = self.summary.get(HOLDOUT, {})
        shown = {k: v for k, v in holdout.items() if k not in _NOT_SHOWN and isinstance(v, (int, float))}
        if shown:
            rows.append((f"holdout ({number(holdout.get('num_samples', '?'))} samples)",
                         ", ".join(f"{html.escape(k)} {number(v)}" for k, v in shown.items())))
        rows.append(("epochs / steps / time", f"{number(self.summary.get('epochs', '?'))} / "
                                              f"{number(self.summary.get('steps', '?'))} / "
                                              f"{seconds(self.summary.get('wall_time_s'))}"))
        if self.report is not None:
            rows.append(("report", f"<code>{html.escape(str(self.report))}</code>"))
        return rows

    def _repr_png_(self) -> bytes | None:
        return png(self.curves()) if any(r.get("scope") == "epoch" for r in self.history) else None

    def _repr_html_(self) -> str:
        image = self._repr_png_()
        return (f"<div><h4>{html.escape(self.name)}</h4>{html_table(self.key_numbers())}"
                f"{img_tag(image, 'training curves') if image else ''}</div>")

    def __repr__(self) -> str:
        best = {k: v for k, v in self.best.items() if k in (self.monitor, "epoch")}
        return f"RunResult(run_dir={str(self.run_dir)!r}, best={best!r}, epochs={self.summary.get('epochs')!r})"

    def _recipe(self) -> Mapping[str, Any]:
        """The run's recipe.toml, read when it is still there (a moved run still shows its numbers)."""
        try:
            return tomllib.loads((self.run_dir / "recipe.toml").read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            return {}


@dataclass(repr=False)
class LRFind:
    """A learning-rate range test: its numbers (`result`: every step's rate and loss, `suggestion`, `min_loss_lr`)
    and its figure (`figure()`, shown inline as a cell's value); `folder` holds lr_find.png, .csv and .json when
    they were written."""

    result: LRFindResult
    name: str
    folder: Path | None = None

    @property
    def suggestion(self) -> float | None:
        return self.result.suggestion

    @property
    def min_loss_lr(self) -> float | None:
        return self.result.min_loss_lr

    def figure(self) -> Any:
        return draw(self.result, self.name)

    def _repr_png_(self) -> bytes:
        return png(self.figure())

    def __repr__(self) -> str:
        return self.result.summary()


@dataclass(repr=False)
class Explained:
    """What `deepcourse.explain` found: one `Explanation` per input (and for the model as a whole), each with its
    figures (PNG files in `folder`), Markdown notes and `numbers` (probabilities, attributions); shown inline."""

    folder: Path
    explanations: list[Explanation]

    @property
    def numbers(self) -> list[dict[str, Any]]:
        """What `deepcourse explain --json` prints: each explanation's title and numbers."""
        return [{"title": e.title, **e.numbers} for e in self.explanations]

    @property
    def images(self) -> list[Path]:
        return [self.folder / f.file for e in self.explanations for f in e.figures]

    def _repr_html_(self) -> str:
        parts = []
        for e in self.explanations:
            parts.append(f"<h4>{html.escape(e.title.replace(chr(92), ''))}</h4>")
            for f in e.figures:
                path = self.folder / f.file
                if path.is_file():
                    parts.append(img_tag(path.read_bytes(), f.title))
                if f.caption:
                    parts.append(f"<p><small>{html.escape(f.caption)}</small></p>")
        parts.append(f"<p>Tables and captions: <code>{html.escape(str(self.folder / 'explain.md'))}</code></p>")
        return "<div>" + "".join(parts) + "</div>"

    def __repr__(self) -> str:
        return f"Explained({len(self.explanations)} explanations, {len(self.images)} figures in {str(self.folder)!r})"
