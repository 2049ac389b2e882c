"""Where a tagger's errors are: span F1 broken down by what training showed it (`deepcourse evaluate --breakdown`),
and the sentences `compare --paired` pairs.

A test split is usually scored lower than dev because more of its entities are new: CoNLL-2003's test stories
are from a later period than train's, dev's from the same. Splitting F1 by entities seen in training (the same
words with the same type somewhere in the training split) or not, and by the share of an entity's words that the
training split never had (out of vocabulary, as the model's vocabulary keys them: lower-cased when it is), shows how
much of a drop comes from unseen entities and how much from the rest. A predicted span is put in a group by its own
words and type, a gold span by its own, so precision, recall and F1 are defined in every group and a right span
falls in the same group either way.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepcourse.api import PairedItem, Recipe, UserError, evaluate_split

from .schemes import convert, spans

#: the sequence-tagging task (typed loosely: importing it here would close an import circle with task.py)
SequenceTagging = Any
#: the groups of an entity by the share of its words out of the training vocabulary
OOV_GROUPS = ("none out of vocabulary", "some out of vocabulary", "all out of vocabulary")
Span = tuple[str, int, int]


def score_tags(task: SequenceTagging, ids: Sequence[int], length: int, *, predicted: bool) -> list[str]:
    """A sentence's tag ids of the primary column as strings (span columns in the scoring scheme); a predicted id
    past the trained tags (never produced) reads as O."""
    name = task.primary
    names = task.tags[name]
    tags = [names[t] if not predicted or 0 <= t < task.num_trained[name] else "O" for t in ids[:length]]
    return convert(tags, task.tag_scheme, task.score_scheme) if task.kinds[name] == "span" else tags


def tagged_sentences(task: SequenceTagging, data: Any, start: int, batch: Mapping[str, torch.Tensor],
                     outputs: Mapping[str, torch.Tensor]) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(tokens, gold tags, predicted tags) of each sentence of an evaluation batch, in the split's order."""
    name = task.primary
    gold, pred = outputs[f"targets_{name}"].tolist(), outputs[f"preds_{name}"].tolist()
    for i, length in enumerate(batch["lengths"].tolist()):
        yield (list(data.tokens[start + i]), score_tags(task, gold[i], length, predicted=False),
               score_tags(task, pred[i], length, predicted=True))


def shown(tokens: Sequence[str], found: set[Span]) -> str:
    """'[PER Alice] [LOC Paris]', or '-' for no span."""
    return " ".join(f"[{t} {' '.join(tokens[s:e])}]" for t, s, e in sorted(found, key=lambda x: x[1])) or "-"


def sentence_items(task: SequenceTagging, data: Any, start: int, batch: Mapping[str, torch.Tensor],
                   outputs: Mapping[str, torch.Tensor]) -> Iterator[PairedItem]:
    for tokens, gold, pred in tagged_sentences(task, data, start, batch, outputs):
        text = " ".join(tokens)
        if task.kinds[task.primary] == "span":
            g, p = set(spans(gold)), set(spans(pred))
            yield PairedItem(text, shown(tokens, g), shown(tokens, p), len(g & p), len(p), len(g))
        else:
            right = sum(a == b for a, b in zip(gold, pred))
            yield PairedItem(text, " ".join(gold), " ".join(pred), right, len(gold), len(gold))


def breakdown(task: SequenceTagging, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any], *,
              split: str | None, data_dir: str | Path | None) -> tuple[dict[str, Any], list[str]]:
    sentences: list[tuple[list[str], list[str], list[str]]] = []
    state: dict[str, Any] = {}

    def on_split(data: Any) -> None:
        state.update(data=data, seen=0)

    def on_batch(batch: Any, outputs: Mapping[str, torch.Tensor]) -> None:
        sentences.extend(tagged_sentences(task, state["data"], state["seen"], batch, outputs))
        state["seen"] += len(batch["lengths"])

    result = evaluate_split(task, model, recipe, artifacts, split=split, data_dir=data_dir, on_split=on_split,
                            on_batch=on_batch)
    if task.kinds.get(task.primary) != "span":
        raise UserError(f"--breakdown: column '{task.primary}' is scored by token accuracy; the breakdown splits "
                        f"span F1 (entities seen or unseen in training), so it needs a span column")
    seen, vocabulary = training_entities(task, recipe, artifacts)
    groups: dict[str, dict[str, dict[str, int]]] = {"seen": {}, "oov": {}, "type": {}}
    for tokens, gold, pred in sentences:
        g, p = set(spans(gold)), set(spans(pred))
        for found, key in ((g, "gold"), (p, "predicted"), (g & p, "correct")):
            for span in found:
                for grouping, group in _groups(span, tokens, seen, vocabulary, task.word_options.key).items():
                    counts = groups[grouping].setdefault(group, {"gold": 0, "predicted": 0, "correct": 0})
                    counts[key] += 1
    numbers = {"split": result.split, "f1": result.metrics.get("f1"), "training_entities": len(seen),
               **{grouping: {g: _scores(c) for g, c in sorted(rows.items(), key=_order)}
                  for grouping, rows in groups.items()}}
    return numbers, _lines(numbers)


def training_entities(task: SequenceTagging, recipe: Recipe, artifacts: Mapping[str, Any]
                      ) -> tuple[set[tuple[str, str]], set[str]]:
    """(type, words) of every entity of the training split (without the holdout, when the run kept one) and the
    vocabulary keys of its words."""
    train = task.setup_data(recipe.data, splits=("train",), seed=recipe.seed, artifacts=artifacts).splits["train"]
    seen: set[tuple[str, str]] = set()
    vocabulary: set[str] = set()
    ids = train.tags[task.primary].tolist()
    for i, tokens in enumerate(train.tokens):
        vocabulary.update(task.word_options.key(t) for t in tokens)
        tags = score_tags(task, ids[i], len(tokens), predicted=False)
        seen.update((t, " ".join(tokens[s:e])) for t, s, e in spans(tags))
    return seen, vocabulary


def _groups(span: Span, tokens: Sequence[str], seen: set[tuple[str, str]], vocabulary: set[str],
            key: Callable[[str], str]) -> dict[str, str]:
    """The group of a span in each grouping: seen or not, its share of words out of vocabulary, its type."""
    kind, start, end = span
    words = tokens[start:end]
    out = sum(1 for w in words if key(w) not in vocabulary)
    share = OOV_GROUPS[0] if out == 0 else OOV_GROUPS[2] if out == len(words) else OOV_GROUPS[1]
    return {"seen": "seen in training" if (kind, " ".join(words)) in seen else "unseen in training",
            "oov": share, "type": kind}


def _order(item: tuple[str, Any]) -> tuple[int, str]:
    fixed = ["seen in training", "unseen in training", *OOV_GROUPS]
    return (fixed.index(item[0]) if item[0] in fixed else len(fixed), item[0])


def _scores(counts: Mapping[str, int]) -> dict[str, Any]:
    p = counts["correct"] / counts["predicted"] if counts["predicted"] else 0.0
    r = counts["correct"] / counts["gold"] if counts["gold"] else 0.0
    return {**counts, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def _lines(numbers: Mapping[str, Any]) -> list[str]:
    titles = {"seen": "entities seen / unseen in training (same words, same type)",
              "oov": "words of the entity out of the training vocabulary", "type": "entity type"}
    lines = [f"breakdown of {numbers['split']} ({numbers['training_entities']:,} distinct entities in training)"]
    for grouping, title in titles.items():
        lines += ["", f"{title}:", f"  {'group':<24} {'gold':>6} {'pred':>6} {'right':>6} {'precision':>9} "
                                   f"{'recall':>9} {'f1':>9}"]
        for group, row in numbers[grouping].items():
            lines.append(f"  {group:<24} {row['gold']:>6} {row['predicted']:>6} {row['correct']:>6} "
                         f"{row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f}")
    return lines
