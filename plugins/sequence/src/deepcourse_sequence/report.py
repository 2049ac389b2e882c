"""Figures for `deepcourse report`: scores per entity type (per tag for token columns) and tagged example sentences
of the evaluation split with the mistakes marked.

The scores are the task's own metrics over the whole evaluation split, computed exactly as `deepcourse evaluate`
computes them (same batches, same metric objects), so the chart and the tables agree with the run's numbers. Only
the example sentences are a sample: mostly sentences with a mistake, spread evenly through the split, so the same
run always shows the same ones and a reader sees the kinds of errors rather than a lucky or an unlucky streak.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from deepcourse.api import (
    Figure,
    Recipe,
    Task,
    UserError,
    evaluate_split,
    grouped_bars,
    heatmap,
    markdown_escape,
    markdown_table,
)

from .schemes import Scheme, Span, convert, spans

#: example sentences per label column: up to MAX_EXAMPLES - 1 with a mistake and one without
MAX_EXAMPLES = 6
#: sentences longer than this are shown only when there are too few shorter ones (a table row must stay readable)
READABLE_LENGTH = 40
#: bars of a token column's per-tag accuracy chart (the most frequent tags; the table lists them all)
MAX_TAG_BARS = 30


class ReportedTagger(Protocol):
    """What a report reads of the sequence-tagging task (besides its being a Task, which `evaluate_split` runs).
    Stated here, not imported from the task module, so the task depends on this module and never the other way
    round."""

    labels: list[str]
    kinds: dict[str, str]
    tags: dict[str, list[str]]
    tag_scheme: Scheme
    score_scheme: Scheme


@dataclass
class TaggedSplit:
    """A split as the model tagged it: the metrics of the whole split and, per label column, each sentence's gold
    and predicted tags (strings in the training scheme)."""

    tokens: Sequence[Sequence[str]]
    gold: dict[str, list[list[str]]]
    pred: dict[str, list[list[str]]]
    metrics: dict[str, Any]


def tag_split(task: ReportedTagger, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any]) -> TaggedSplit:
    """Decode the evaluation split exactly as `deepcourse evaluate` does (`evaluate_split`: the same batches, device,
    precision and metric objects), keeping each sentence's gold and predicted tags."""
    gold: dict[str, list[list[str]]] = {name: [] for name in task.labels}
    pred: dict[str, list[list[str]]] = {name: [] for name in task.labels}

    def keep(batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        lengths = batch["lengths"].tolist()
        for name in task.labels:
            names = task.tags[name]
            targets, preds = outputs[f"targets_{name}"].tolist(), outputs[f"preds_{name}"].tolist()
            for g, p, n in zip(targets, preds, lengths, strict=True):
                gold[name].append([names[i] for i in g[:n]])
                pred[name].append([names[i] for i in p[:n]])

    assert isinstance(task, Task)  # and a ReportedTagger: mypy reads the two together from here on
    result = evaluate_split(task, model, recipe, artifacts, on_batch=keep)
    return TaggedSplit(result.data.tokens, gold, pred, result.metrics)


def choose_examples(mistakes: Sequence[int], informative: Sequence[bool], lengths: Sequence[int],
                    k: int = MAX_EXAMPLES) -> list[int]:
    """Indices of up to `k` sentences to show, in split order: sentences with a mistake (k - 1 of them, or k when
    no informative sentence is right) and one informative sentence without, each group spread evenly through the
    split. Deterministic: the same predictions always give the same choice."""
    wrong = [i for i, m in enumerate(mistakes) if m]
    right = [i for i, (m, info) in enumerate(zip(mistakes, informative, strict=True)) if not m and info]
    n_right = min(len(right), 1 if wrong else k)
    n_wrong = min(len(wrong), k - n_right)
    return sorted(_spread(wrong, n_wrong, lengths) + _spread(right, n_right, lengths))


def _spread(indices: Sequence[int], n: int, lengths: Sequence[int]) -> list[int]:
    """n of `indices`, evenly spaced (the middle of n equal slices), preferring sentences short enough to read."""
    short = [i for i in indices if lengths[i] <= READABLE_LENGTH]
    pool = short if len(short) >= n else list(indices)
    return [pool[(2 * j + 1) * len(pool) // (2 * n)] for j in range(n)]


def render_spans(tokens: Sequence[str], found: Iterable[Span], marked: set[Span]) -> str:
    """A sentence in Markdown with its spans in brackets, `[PER Alice Smith]`, the `marked` ones in bold."""
    by_start = {start: (type_, start, end) for type_, start, end in found}
    words, i = [], 0
    while i < len(tokens):
        span = by_start.get(i)
        if span is None:
            words.append(markdown_escape(tokens[i]))
            i += 1
            continue
        text = f"[{markdown_escape(span[0])} " + " ".join(markdown_escape(t) for t in tokens[i:span[2]]) + "]"
        words.append(f"**{text}**" if span in marked else text)
        i = span[2]
    return " ".join(words)


def render_token_tags(tokens: Sequence[str], gold: Sequence[str], pred: Sequence[str]) -> str:
    """A sentence in Markdown, each wrongly tagged token in bold as `token/GOLD→PREDICTED`."""
    return " ".join(markdown_escape(t) if g == p else
                    f"**{markdown_escape(t)}/{markdown_escape(g)}→{markdown_escape(p)}**"
                    for t, g, p in zip(tokens, gold, pred, strict=True))


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


MISSED, SPURIOUS = "(missed)", "(spurious)"


def type_confusion(gold: Sequence[set[Span]], pred: Sequence[set[Span]]
                   ) -> tuple[list[str], dict[tuple[str, str], int]]:
    """Gold type against predicted type for spans with the same boundaries, sentence by sentence: a gold span no
    predicted span has the boundaries of is `(missed)`, a predicted span no gold span has them is `(spurious)` (so a
    boundary error is one of each, as the scores count it). Returns the types seen and the counts by (gold, pred)."""
    counts: Counter[tuple[str, str]] = Counter()
    for g, q in zip(gold, pred, strict=True):
        predicted = {(start, end): type_ for type_, start, end in q}
        golden = {(start, end): type_ for type_, start, end in g}
        for where, type_ in golden.items():
            counts[type_, predicted.get(where, MISSED)] += 1
        for where, type_ in predicted.items():
            if where not in golden:
                counts[SPURIOUS, type_] += 1
    types = sorted({t for pair in counts for t in pair} - {MISSED, SPURIOUS})
    return types, dict(counts)


class ColumnReport:
    """Figure, table and examples of one label column; `span_section` or `token_section` fill them."""

    def __init__(self, task: ReportedTagger, tagged: TaggedSplit, name: str, split: str, out: Path) -> None:
        self.task, self.tagged, self.name, self.split, self.out = task, tagged, name, split, out
        self.prefix = f"{name}_" if len(task.labels) > 1 else ""
        self.figures: list[Any] = []
        self.notes: list[str] = []

    @property
    def sentences(self) -> int:
        return len(self.tagged.tokens)

    # -- span columns (entities, chunks): seqeval's per-type scores ---------------------------------------------
    def span_section(self) -> None:
        metrics, p = self.tagged.metrics, self.prefix
        per_type: dict[str, dict[str, Any]] = metrics.get(f"{p}per_type") or {}
        scheme = self.task.score_scheme
        total = sum(int(row["support"]) for row in per_type.values())
        if per_type:
            file = f"per_type_{self.name}.png"
            rows = [*per_type.items(), ("all", {"precision": metrics[f"{p}precision"], "recall": metrics[f"{p}recall"],
                                                "f1": metrics[f"{p}f1"], "support": total})]
            labels = [f"{t}\n(n={int(r['support']):,})" for t, r in per_type.items()] + [f"all (micro)\n(n={total:,})"]
            grouped_bars(self.out / file, labels,
                         {"precision": [r["precision"] for _, r in rows], "recall": [r["recall"] for _, r in rows],
                          "F1": [r["f1"] for _, r in rows]},
                         title=f"{self.name}: precision, recall and F1 per type ({self.split}, "
                               f"{_plural(self.sentences, 'sentence')})",
                         xlabel="span type (n = gold spans of the type in the split)", ylabel="score", total_last=True,
                         decimals=3)
            self.figures.append(Figure(
                f"Scores per type ({self.name})", file,
                f"Precision, recall and F1 of each span type (entity type for NER) over all "
                f"{_plural(self.sentences, 'sentence')} of the {self.split} split, on exact spans (type and both "
                f"boundaries; seqeval in conlleval's mode, {scheme} scheme), as the run's metrics are scored; n: gold "
                f"spans of the type. 'all' is the micro average over every span: the run's `{p}f1`."))
            self.notes += [f"## Precision, recall and F1 per type ({self.name})", "",
                           *markdown_table(["type", "precision", "recall", "F1", "support"],
                                           [[f"**{t}**" if t == "all" else t, f"{r['precision']:.4f}",
                                             f"{r['recall']:.4f}", f"{r['f1']:.4f}", f"{int(r['support']):,}"]
                                            for t, r in rows]),
                           "", f"support: gold spans of the type in the {self.split} split; **all**: micro average.",
                           ""]
        else:
            self.notes += [f"_No scores per type for {self.name}: the {self.split} split has no spans and the model "
                           f"predicts none._", ""]
        self._type_confusion()
        self._span_examples()

    def _span_sets(self) -> tuple[list[set[Span]], list[set[Span]]]:
        """Gold and predicted spans of every sentence, in the scoring scheme."""
        tag, score = self.task.tag_scheme, self.task.score_scheme
        gold = [set(spans(convert(s, tag, score))) for s in self.tagged.gold[self.name]]
        pred = [set(spans(convert(s, tag, score))) for s in self.tagged.pred[self.name]]
        return gold, pred

    def _type_confusion(self) -> None:
        """Which type each gold span was given (same boundaries), what was missed and what was invented."""
        types, counts = type_confusion(*self._span_sets())
        if not types:
            return
        rows, columns = [*types, SPURIOUS], [*types, MISSED]
        matrix: list[list[int | None]] = [[counts.get((g, q), 0) for q in columns] for g in rows]
        matrix[-1][-1] = None  # no span is both missed and spurious
        file = f"type_confusion_{self.name}.png"
        heatmap(self.out / file, [[float("nan") if v is None else v for v in row] for row in matrix], rows, columns,
                title=f"{self.name}: gold type against predicted type ({self.split})", xlabel="predicted type",
                ylabel="gold type", colorbar="spans", annotations=[["" if not v else f"{v:,}" for v in row]
                                                                   for row in matrix])
        self.figures.append(Figure(
            f"Type confusion ({self.name})", file,
            f"Spans of the {self.split} split by gold type (rows) and predicted type (columns), matched on exact "
            f"boundaries: {MISSED} is a gold span with no predicted span at its boundaries, {SPURIOUS} a predicted "
            f"span with no gold span at its boundaries; a boundary error counts once in each."))
        self.notes += [f"## Gold type against predicted type ({self.name})", "",
                       *markdown_table(["gold \\ predicted", *map(markdown_escape, columns)],
                                       [[f"**{markdown_escape(g)}**", *("" if v is None else f"{v:,}" for v in row)]
                                        for g, row in zip(rows, matrix)]),
                       "", f"Diagonal: spans found with the right type; off the diagonal, the right boundaries with "
                           f"the wrong type. {MISSED}: gold spans the model did not find at those boundaries; "
                           f"{SPURIOUS}: predicted spans that are not in the gold standard at those boundaries.", ""]

    def _span_examples(self) -> None:
        gold, pred = self._span_sets()
        mistakes = [len(g ^ q) for g, q in zip(gold, pred, strict=True)]
        chosen = choose_examples(mistakes, [bool(g) for g in gold], [len(t) for t in self.tagged.tokens])
        if not chosen:
            return
        rows = []
        for i in chosen:
            tokens, g, q = self.tagged.tokens[i], gold[i], pred[i]
            missed, wrong = g - q, q - g
            errors = ", ".join(part for part in (f"{len(wrong)} wrong" if wrong else "",
                                                 f"{len(missed)} missed" if missed else "") if part) or "none"
            rows.append([str(i + 1), render_spans(tokens, g, missed), render_spans(tokens, q, wrong), errors])
        legend = ("Spans (entities, chunks) are in brackets with their type, [PER Alice]. **Bold** marks a mistake: in "
                  "*gold*, a span the model missed; in *predicted*, a span that is not in the gold standard. A span "
                  "counts only with its exact type and boundaries, so a wrong type or boundary is one wrong and one "
                  "missed span, as in the scores.")
        self.notes += [f"## Example sentences ({self.name})", "", f"{self._sample_text(chosen, mistakes)} {legend}", "",
                       *markdown_table([f"{self.split} sentence", "gold", "predicted", "mistakes"], rows), ""]

    def _sample_text(self, chosen: Sequence[int], mistakes: Sequence[int]) -> str:
        """Which sentences the examples are, so a reader does not take them for a random sample."""
        shown_wrong = sum(1 for i in chosen if mistakes[i])
        with_mistakes = sum(1 for m in mistakes if m)
        return (f"{shown_wrong} of the {with_mistakes:,} {self.split} sentences (out of {self.sentences:,}) that "
                f"have a mistake, and {len(chosen) - shown_wrong} without, spread evenly through the split.")

    # -- token columns (part of speech): accuracy per gold tag -----------------------------------------------------
    def token_section(self) -> None:
        support: Counter[str] = Counter()
        correct: Counter[str] = Counter()
        for gold, pred in zip(self.tagged.gold[self.name], self.tagged.pred[self.name], strict=True):
            for g, q in zip(gold, pred, strict=True):
                support[g] += 1
                correct[g] += g == q
        order = sorted(support, key=lambda t: (-support[t], t))
        accuracy = {t: correct[t] / support[t] for t in order}
        overall = self.tagged.metrics.get(f"{self.prefix}accuracy", 0.0)
        if order:
            file = f"per_tag_{self.name}.png"
            shown = order[:MAX_TAG_BARS]
            grouped_bars(self.out / file, [f"{t} (n={support[t]:,})" for t in shown],
                         {"accuracy": [accuracy[t] for t in shown]},
                         title=f"{self.name}: accuracy per gold tag ({self.split}, overall {overall:.4f})",
                         xlabel="gold tag (n = tokens in the split)", ylabel="accuracy (tokens tagged right)")
            more = f"the {len(shown)} most frequent of {len(order)} tags; " if len(order) > len(shown) else ""
            self.figures.append(Figure(
                f"Per-tag accuracy ({self.name})", file,
                f"Share of the tokens of each gold tag that the model tagged right, over all "
                f"{_plural(self.sentences, 'sentence')} of the {self.split} split ({more}n: tokens with that gold "
                f"tag). Overall token accuracy: {overall:.4f}, the run's `{self.prefix}accuracy`."))
            self.notes += [f"## Accuracy per gold tag ({self.name})", "",
                           *markdown_table(["gold tag", "accuracy", "tokens"],
                                           [[markdown_escape(t), f"{accuracy[t]:.4f}", f"{support[t]:,}"]
                                            for t in order] + [["**all**", f"{overall:.4f}",
                                                                f"{sum(support.values()):,}"]]), ""]
        mistakes = [sum(g != q for g, q in zip(gold, pred, strict=True))
                    for gold, pred in zip(self.tagged.gold[self.name], self.tagged.pred[self.name], strict=True)]
        chosen = choose_examples(mistakes, [len(t) > 1 for t in self.tagged.tokens],
                                 [len(t) for t in self.tagged.tokens])
        if not chosen:
            return
        rows = [[str(i + 1), render_token_tags(self.tagged.tokens[i], self.tagged.gold[self.name][i],
                                               self.tagged.pred[self.name][i]),
                 f"{mistakes[i]} of {len(self.tagged.tokens[i])} tokens" if mistakes[i] else "none"]
                for i in chosen]
        legend = "A wrongly tagged token is in bold as **token/GOLD→PREDICTED**."
        self.notes += [f"## Example sentences ({self.name})", "", f"{self._sample_text(chosen, mistakes)} {legend}", "",
                       *markdown_table([f"{self.split} sentence", "tagged", "mistakes"], rows), ""]


def write_figures(task: ReportedTagger, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any], out: Path
                  ) -> tuple[list[Figure], list[str]]:
    """Per label column: a score chart and table, and example sentences; notes instead when the split is not
    here (a report made on another machine still has its curves)."""
    split = recipe.eval.split
    try:
        tagged = tag_split(task, model, recipe, artifacts)
    except UserError as exc:
        return [], [f"_No {split} figures: {exc}_", ""]
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    notes: list[str] = []
    for name in task.labels:
        column = ColumnReport(task, tagged, name, split, out)
        if task.kinds.get(name) == "span":
            column.span_section()
        else:
            column.token_section()
        figures += column.figures
        notes += column.notes
    return figures, notes
