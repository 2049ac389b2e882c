"""`deepcourse compare --paired RUN_A RUN_B --split S`: two runs on the same items, tested item by item.

Seeds are compared with Welch's t-test on their scores (`results.stats`); two single runs are compared here, on the
answers each gave to the same examples, which is far more sensitive: most examples are answered alike by both, and
only the ones that flipped carry evidence.

    classifier (every item right or wrong)   McNemar's test on the b items only A got right and the c only B got
                                             right: exact two-sided binomial (b of b + c at 1/2) when b + c < 25,
                                             else chi-square with continuity correction, (|b - c| - 1)^2 / (b + c)
    tagger (spans per sentence)              paired bootstrap of span F1 = 2 right / (predicted + gold): sentences
                                             resampled with replacement, the same draw for both runs; two-sided
                                             p = (1 + #{|d* - d| >= |d|}) / (1 + R), d* the resampled difference
                                             shifted by the observed d (a null centred on no difference)

The items come from the task (`Task.paired_items`); both runs must read the same items (the same split of the same
data, the same gold answers), which is checked item by item.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepcourse.errors import DataError, UserError
from deepcourse.results.inference import as_option, load_trained, require_data_files
from deepcourse.task import PairedItem, Task
from deepcourse.training.accelerator import torch_threads
from deepcourse.training.evaluation import evaluate_split

#: below this many discordant items McNemar's chi-square approximation is poor: the exact binomial test is used
EXACT_BELOW = 25
RESAMPLES = 1000


@dataclass
class Paired:
    """Two runs' answers on the same items of one split."""

    split: str
    metric: str
    a: list[PairedItem]
    b: list[PairedItem]


def paired_answers(run_a: Path, run_b: Path, *, split: str | None, data_dir: str | Path | None) -> Paired:
    """Both runs evaluated on `split` (default: their recipes' eval.split, which must be the same)."""
    require_data_files(data_dir)
    answers: list[list[PairedItem]] = []
    tasks: list[tuple[str, Task]] = []
    splits: list[str] = []
    for run in (run_a, run_b):
        recipe, task, _, artifacts, model = load_trained(run)
        if type(task).paired_items is Task.paired_items:
            raise UserError(f"--paired: task '{recipe.task.name}' cannot pair two runs' answers (its plugin does not "
                            f"implement Task.paired_items)")
        if tasks and recipe.task.name != tasks[0][0]:
            raise UserError(f"--paired: {run} is a '{recipe.task.name}' run and {run_a} a '{tasks[0][0]}' run; "
                            f"compare two runs of the same task")
        tasks.append((recipe.task.name, task))
        items: list[PairedItem] = []
        state: dict[str, Any] = {}

        def on_split(data: Any, state: dict[str, Any] = state) -> None:
            state.update(data=data, seen=0)

        def on_batch(batch: Any, outputs: dict[str, Any], task: Task = task, state: dict[str, Any] = state,
                     items: list[PairedItem] = items) -> None:
            items.extend(task.paired_items(state["data"], state["seen"], batch, outputs))
            state["seen"] += len(next(iter(outputs.values())))

        with torch_threads(recipe.train.threads):
            try:
                result = evaluate_split(task, model, recipe, artifacts, split=split, data_dir=data_dir,
                                        key=f"--split {split}" if split else None, on_split=on_split,
                                        on_batch=on_batch)
            except DataError as exc:
                raise as_option(exc, data_dir) from None
        answers.append(items)
        splits.append(result.split)
    if splits[0] != splits[1]:
        raise UserError(f"--paired: {run_a} is evaluated on '{splits[0]}' and {run_b} on '{splits[1]}' (their "
                        f"recipes' eval.split); give --split to compare both on the same split")
    labels_a, labels_b = tasks[0][1].label_names(), tasks[1][1].label_names()
    if labels_a != labels_b:
        raise UserError(f"--paired: {run_a} and {run_b} choose among different labels "
                        f"({_label_difference(labels_a, labels_b)}); compare runs trained on the same label set")
    require_same_items(answers[0], answers[1], splits[0])
    binary = all(i.predicted_count == i.gold_count == 1 for i in answers[0] + answers[1])
    return Paired(splits[0], "accuracy" if binary else "f1", answers[0], answers[1])


def _label_difference(a: dict[str, list[str]], b: dict[str, list[str]]) -> str:
    for key in sorted({*a, *b}):
        names_a, names_b = set(a.get(key, [])), set(b.get(key, []))
        only_a, only_b = sorted(names_a - names_b), sorted(names_b - names_a)
        if only_a or only_b:
            return f"{key}: only A has {only_a[:5]}, only B has {only_b[:5]}"
    return "the same names in another order"


def require_same_items(a: Sequence[PairedItem], b: Sequence[PairedItem], split: str) -> None:
    """The runs read the same items with the same gold answers: otherwise their answers cannot be paired."""
    if len(a) != len(b):
        raise UserError(f"--paired: the runs read {len(a)} and {len(b)} items of split '{split}' (other data, "
                        f"other data options, or a holdout drawn differently); pair runs evaluated on the same items")
    for index, (x, y) in enumerate(zip(a, b)):
        if (x.item, x.gold) != (y.item, y.gold):
            raise UserError(f"--paired: item {index} of split '{split}' differs between the runs ({x.item!r} gold "
                            f"{x.gold!r} vs {y.item!r} gold {y.gold!r}); pair runs evaluated on the same items")


def mcnemar(right_a: Sequence[bool], right_b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's test of two classifiers' right/wrong answers on the same items."""
    from scipy import stats

    only_a = sum(x and not y for x, y in zip(right_a, right_b))
    only_b = sum(y and not x for x, y in zip(right_a, right_b))
    n = only_a + only_b
    if n == 0:
        p, method = 1.0, "no discordant item"
    elif n < EXACT_BELOW:
        p, method = float(stats.binomtest(only_a, n, 0.5).pvalue), "McNemar, exact binomial"
    else:
        chi2 = (abs(only_a - only_b) - 1) ** 2 / n
        p, method = float(stats.chi2.sf(chi2, 1)), "McNemar, chi-square with continuity correction"
    return {"test": method, "only_a_right": only_a, "only_b_right": only_b, "p_value": p}


def f1_of(hits: np.ndarray, predicted: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """F1 = 2 hits / (predicted + gold), over the last axis' sums; 0 where there is nothing to score."""
    denominator = predicted.sum(-1) + gold.sum(-1)
    return np.where(denominator > 0, 2 * hits.sum(-1) / np.maximum(denominator, 1), 0.0)


def paired_bootstrap(a: Sequence[PairedItem], b: Sequence[PairedItem], *, resamples: int = RESAMPLES,
                     seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of F1 (B minus A): the items resampled with replacement, the same draw for both runs."""
    counts = {run: [np.array([getattr(i, f) for i in items], dtype=np.int64)
                    for f in ("hits", "predicted_count", "gold_count")] for run, items in (("a", a), ("b", b))}
    observed = float(f1_of(*counts["b"]) - f1_of(*counts["a"]))
    rng = np.random.default_rng(seed)
    deltas = []
    for start in range(0, resamples, 100):  # in chunks: [chunk, items] index arrays stay small
        draw = rng.integers(0, len(a), size=(min(100, resamples - start), len(a)))
        deltas.append(f1_of(*(x[draw] for x in counts["b"])) - f1_of(*(x[draw] for x in counts["a"])))
    delta = np.concatenate(deltas)
    extreme = int(np.sum(np.abs(delta - observed) >= abs(observed)))
    low, high = np.percentile(delta, [2.5, 97.5])
    return {"test": f"paired bootstrap, {resamples} resamples, seed {seed}", "difference": observed,
            "ci_low": float(low), "ci_high": float(high), "p_value": (1 + extreme) / (1 + resamples)}


def compare_paired(run_a: Path, run_b: Path, *, split: str | None = None, data_dir: str | Path | None = None,
                   resamples: int = RESAMPLES, seed: int = 0, show: int = 10) -> dict[str, Any]:
    """The paired test of two runs on a split, their scores, and the first `show` items that flipped."""
    paired = paired_answers(run_a, run_b, split=split, data_dir=data_dir)
    right_a = [x.predicted == x.gold for x in paired.a]
    right_b = [y.predicted == y.gold for y in paired.b]
    if paired.metric == "accuracy":
        test = mcnemar(right_a, right_b)
    else:
        test = paired_bootstrap(paired.a, paired.b, resamples=resamples, seed=seed)
    scores = {run: float(f1_of(*(np.array([getattr(i, f) for i in items]) for f in
                                 ("hits", "predicted_count", "gold_count"))))
              for run, items in (("a", paired.a), ("b", paired.b))}
    flips = [{"index": i, "item": x.item, "gold": x.gold, "a": x.predicted, "b": y.predicted,
              "right": "a" if ra else "b"}
             for i, (x, y, ra, rb) in enumerate(zip(paired.a, paired.b, right_a, right_b)) if ra != rb]
    return {"run_a": str(run_a), "run_b": str(run_b), "split": paired.split, "items": len(paired.a),
            "metric": paired.metric, "a": scores["a"], "b": scores["b"], **test, "flipped": len(flips),
            "flips": flips[:show]}


def describe(result: dict[str, Any]) -> list[str]:
    """The comparison as the command line prints it."""
    metric = result["metric"]
    lines = [f"paired comparison on '{result['split']}' ({result['items']:,} items)",
             f"  A {result['run_a']}: {metric} {result['a']:.4f}",
             f"  B {result['run_b']}: {metric} {result['b']:.4f}",
             f"  test: {result['test']}"]
    if "only_a_right" in result:
        lines.append(f"  only A right: {result['only_a_right']}, only B right: {result['only_b_right']}")
    else:
        lines.append(f"  B - A: {result['difference']:+.4f}, 95% CI [{result['ci_low']:+.4f}, "
                     f"{result['ci_high']:+.4f}]")
    lines += [f"  p = {result['p_value']:.4g}", "",
              f"{result['flipped']} item(s) right in one run only" +
              (f"; the first {len(result['flips'])}:" if result["flips"] else "")]
    for flip in result["flips"]:
        lines += [f"  [{flip['index']}] {flip['item']}", f"      gold: {flip['gold']}", f"      A:    {flip['a']}",
                  f"      B:    {flip['b']}"]
    return lines
