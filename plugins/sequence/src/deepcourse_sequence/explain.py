"""`deepcourse explain` for taggers: what the CRF learnt about tag order, how sure the tagger is of each tag, which
other taggings it considered, and which words an entity's prediction rests on.

- transitions: each CRF head's start, transition and end scores as a heatmap with the tag names, the moves the
  training scheme forbids (O -> I-PER in BIO; O -> E-PER in BIOES) marked, so a student sees that they were learnt
  to be unlikely;
- marginals: P(tag_t = the predicted tag | sentence) for every token, by the forward-backward algorithm (the
  gradient of log Z, `crf.tag_marginals`); a softmax head's are its per-token probabilities;
- n-best: the K most probable tag sequences with their probabilities (list Viterbi, `crf.nbest_paths`), as NCRF++
  decodes them; path 1 is the Viterbi path `predict` gives;
- saliency: integrated gradients (Captum's LayerIntegratedGradients, from zero vectors: the padding embedding) over
  the word embeddings of the log-probability that the CRF gives the entity's tags, summed per token. Character
  features are held as they are: the attribution is to the words' embeddings only.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from deepcourse.api import (
    FIGSIZE,
    ExplainOptions,
    Explanation,
    Figure,
    UserError,
    heatmap,
    layer_integrated_gradients,
    markdown_escape,
    markdown_table,
    pyplot,
)

from .crf import log_partition, nbest_paths, tag_marginals
from .models.heads import CRFHead
from .models.recurrent import SequenceTagger
from .schemes import Scheme, allowed_transition

#: sentences one call explains (a CoNLL file can hold thousands)
MAX_SENTENCES = 20
DEFAULT_NBEST = 3
#: predicted entities per sentence that get a saliency figure when --target does not choose
MAX_SALIENT = 3
#: `predict --nbest K` lists up to this many times K of the model's paths to find K that differ in the output
MERGE_REACH = 8


class ExplainedTagger(Protocol):
    """What an explanation reads of the sequence-tagging task. Stated here, not imported from the task module, so
    the task depends on this module and never the other way round."""

    labels: list[str]
    kinds: dict[str, str]
    tags: dict[str, list[str]]
    num_trained: dict[str, int]
    tag_scheme: Scheme

    def sentences(self, inputs: Sequence[str]) -> Iterator[tuple[str, list[str]]]: ...

    def batch_of(self, sentences: Sequence[Sequence[str]], device: torch.device) -> dict[str, torch.Tensor]: ...

    def to_file_scheme(self, name: str, ids: Sequence[int]) -> list[str]: ...

    def entities(self, tokens: Sequence[str], tags: Sequence[str]) -> list[dict[str, Any]]: ...


def _unwrapped(model: nn.Module) -> SequenceTagger:
    """The tagger inside a model that Accelerate may have wrapped (DistributedDataParallel keeps it as `.module`)."""
    return cast(SequenceTagger, getattr(model, "module", model))


def _chain(model: nn.Module, name: str, scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return _unwrapped(model).head(name).chain(scores)


def best_paths(task: ExplainedTagger, model: nn.Module, name: str, scores: torch.Tensor,
               k: int) -> list[tuple[float, list[str], list[str]]]:
    """The k most probable tag sequences of one sentence (`scores` [T, K] of head `name`), best first: each path's
    probability, its tags as the model predicts them (the training scheme: the paths all differ) and as the data
    files write them (two paths may read alike there, when one holds a move the scheme forbids, which the CRF
    makes unlikely but not impossible, repaired as conlleval reads it)."""
    with torch.no_grad():  # numbers only: the CRF's parameters require grad, and nothing here is backpropagated
        emissions, start, end, transitions = _chain(model, name, scores.detach().unsqueeze(0))
        mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        log_z = float(log_partition(emissions.double(), mask, start.double(), end.double(), transitions.double())[0])
        found = nbest_paths(emissions[0], start, end, transitions, k)
    names = task.tags[name]
    return [(math.exp(score - log_z), [names[i] for i in path], task.to_file_scheme(name, path))
            for score, path in found]


def output_paths(task: ExplainedTagger, model: nn.Module, name: str, scores: torch.Tensor,
                 k: int) -> list[dict[str, Any]]:
    """The k most probable tag sequences of one sentence as the output writes them (the data files' scheme), for
    `predict --nbest`: the model's paths that read alike there (a BIOES path with a move the scheme forbids reads
    as another one in BIO) are one answer, whose probability is the sum of theirs (`paths`: how many), and more of
    the model's paths are listed (up to MERGE_REACH times k) until k different answers are found. Ranked by that
    sum, so answer 1 is the Viterbi path's reading unless several weaker paths together outweigh it."""
    fetch = k
    while True:
        found = best_paths(task, model, name, scores, fetch)
        merged: dict[tuple[str, ...], dict[str, Any]] = {}
        for p, own, tags in found:
            entry = merged.setdefault(tuple(tags), {"probability": 0.0, "tags": tags, "model_tags": own, "paths": 0})
            entry["probability"] += p
            entry["paths"] += 1
        if len(merged) >= k or len(found) < fetch or fetch >= MERGE_REACH * k:
            break
        fetch = min(2 * fetch, MERGE_REACH * k)
    return sorted(merged.values(), key=lambda e: -e["probability"])[:k]


def _check_options(options: ExplainOptions) -> None:
    for value, flag, why in ((options.layer, "--layer", "Grad-CAM layers are a CNN's"),
                             (options.channels, "--channels", "feature maps are a CNN's"),
                             (options.topk, "--topk", "a tagger lists its n best tag sequences: use --nbest K")):
        if value is not None:
            raise UserError(f"{flag}: does not apply to a tagger ({why})")


def explain_sentences(task: ExplainedTagger, model: nn.Module, inputs: Sequence[str], *, options: ExplainOptions,
                      device: torch.device, out: Path) -> Iterator[Explanation]:
    """The model's transitions, then one explanation per sentence (text, or each sentence of a CoNLL file)."""
    _check_options(options)
    sentences = list(task.sentences(inputs))
    if len(sentences) > MAX_SENTENCES:
        raise UserError(f"explain: the inputs hold {len(sentences):,} sentences; explain takes at most "
                        f"{MAX_SENTENCES} at a time (a file of a few sentences, or sentences as text)")
    yield transitions_explanation(task, model, out)
    for index, (source, tokens) in enumerate(sentences, 1):
        if tokens:
            yield sentence_explanation(task, model, index, source, tokens, options, device, out)


# -- the model: CRF transitions -------------------------------------------------------------------------------------
def transitions_explanation(task: ExplainedTagger, model: nn.Module, out: Path) -> Explanation:
    explanation = Explanation("The CRF's transitions")
    for name in task.labels:
        head = _unwrapped(model).head(name)
        if not isinstance(head, CRFHead):
            explanation.notes += [f"_{name}: a softmax head chooses each tag on its own, so it has no transition "
                                  f"scores; its n-best paths are products of per-token probabilities._", ""]
            continue
        tags = task.tags[name][:task.num_trained[name]]
        crf = head.crf
        start, end, trans = (t.detach().float().cpu() for t in (crf.start_transitions, crf.end_transitions,
                                                                  crf.transitions))
        k = len(tags)
        values = torch.full((k + 1, k + 1), float("nan"))
        values[0, :k], values[1:, :k], values[1:, k] = start, trans, end
        scheme = task.tag_scheme if task.kinds[name] == "span" else None
        marks = torch.zeros(k + 1, k + 1, dtype=torch.bool)
        if scheme is not None:
            for j, tag in enumerate(tags):
                marks[0, j] = not allowed_transition(None, tag, scheme)
                marks[j + 1, k] = not allowed_transition(tag, None, scheme)
                for i, prev in enumerate(tags):
                    marks[i + 1, j] = not allowed_transition(prev, tag, scheme)
        file = f"transitions_{name}.png"
        heatmap(out / file, values.numpy(), ["(start)", *tags], [*tags, "(end)"],
                title=f"{name}: CRF transition scores (row: from, column: to)", xlabel="next tag",
                ylabel="previous tag", colorbar="score (higher: more likely)", cmap="viridis",
                marks=marks.numpy(), mark_label=f"a move the {scheme} scheme forbids" if scheme else "")
        known = ~torch.isnan(values)
        forbidden, allowed = values[marks & known], values[~marks & known]
        numbers: dict[str, Any] = {"tags": tags, "start": start.tolist(), "end": end.tolist(),
                                   "transitions": trans.tolist()}
        caption = (f"Scores the CRF adds for each move between {task.tag_scheme} tags (first row: the sentence's first "
                   f"tag; last column: its last)")
        if len(forbidden):
            numbers.update(forbidden_mean=float(forbidden.mean()), allowed_mean=float(allowed.mean()),
                           forbidden_max=float(forbidden.max()))
            caption += (f". Crosses: the {int(marks.sum())} moves the scheme forbids; they average "
                        f"{float(forbidden.mean()):.2f} (highest {float(forbidden.max()):.2f}) against "
                        f"{float(allowed.mean()):.2f} for the allowed ones")
        explanation.figures.append(Figure(f"Transitions ({name})", file, caption + "."))
        explanation.numbers[name] = numbers
    return explanation


# -- one sentence -----------------------------------------------------------------------------------------------------
def sentence_explanation(task: ExplainedTagger, model: nn.Module, index: int, source: str, tokens: list[str],
                         options: ExplainOptions, device: torch.device, out: Path) -> Explanation:
    batch = task.batch_of([tokens], device)
    with torch.no_grad():
        result = model(batch, decode=True, scores=True)
    shown = " ".join(tokens) if len(tokens) <= 12 else " ".join(tokens[:12]) + " ..."
    explanation = Explanation(f"Sentence {index}: {markdown_escape(shown)}",
                              numbers={"input": source if source != "text" else " ".join(tokens), "tokens": tokens})
    for name in task.labels:
        scores = result[f"scores_{name}"][0].float()
        pred_ids = result[f"pred_{name}"][0, :len(tokens)].tolist()
        tags = task.to_file_scheme(name, pred_ids)
        column: dict[str, Any] = {"tags": tags}
        _marginals(task, model, name, scores, pred_ids, tokens, index, out, explanation, column)
        _nbest(task, model, name, scores, tokens, options.nbest or DEFAULT_NBEST, explanation, column)
        if task.kinds[name] == "span":
            _saliency(task, model, name, batch, pred_ids, tags, tokens, index, options, out, explanation, column)
        explanation.numbers[name] = column
    return explanation


def _marginals(task: ExplainedTagger, model: nn.Module, name: str, scores: torch.Tensor, pred_ids: list[int],
               tokens: list[str], index: int, out: Path, explanation: Explanation, column: dict[str, Any]) -> None:
    """The marginal of each token's tag on the Viterbi path, in the model's own tags (the training scheme: a
    marginal is over single tags, which only a whole sequence converts to another scheme)."""
    emissions, start, end, transitions = _chain(model, name, scores.unsqueeze(0))
    mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
    marginals = tag_marginals(emissions, mask, start, end, transitions)[0].cpu()
    names = task.tags[name]
    tags = [names[k] for k in pred_ids]
    chosen = [float(marginals[t, k]) for t, k in enumerate(pred_ids)]
    runner_up = []
    for t, k in enumerate(pred_ids):
        others = marginals[t].clone()
        others[k] = -1.0
        j = int(others.argmax())
        runner_up.append({"tag": names[j], "probability": round(float(marginals[t, j]), 6)})
    column["marginals"] = [{"token": tok, "tag": tag, "probability": round(p, 6), "next": nxt}
                           for tok, tag, p, nxt in zip(tokens, tags, chosen, runner_up)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(FIGSIZE[0], 1.2 + 0.55 * len(tokens)), FIGSIZE[1]))
    colours = ["tab:grey" if tag == "O" else "tab:blue" for tag in tags]
    bars = ax.bar(range(len(tokens)), chosen, color=colours)
    ax.bar_label(bars, labels=tags, fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right")
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.grid(axis="x", visible=False)
    ax.set(title=f"{name}: probability of each predicted tag (sentence {index})", ylabel="marginal probability")
    file = f"{index:02d}_marginals_{name}.png"
    fig.savefig(out / file)
    plt.close(fig)
    least = min(range(len(tokens)), key=lambda t: chosen[t])
    scheme = f" ({task.tag_scheme}, the scheme the model was trained in)" if task.kinds[name] == "span" else ""
    explanation.figures.append(Figure(
        f"Marginals ({name})", file,
        f"P(tag = the predicted tag | sentence) for each token, summed over every tag sequence (forward-backward); "
        f"each bar is labelled with the tag{scheme}. Least sure: '{markdown_escape(tokens[least])}' as "
        f"{tags[least]} ({chosen[least]:.3f}; next: {runner_up[least]['tag']}, "
        f"{runner_up[least]['probability']:.3f})."))


def _nbest(task: ExplainedTagger, model: nn.Module, name: str, scores: torch.Tensor, tokens: list[str], k: int,
           explanation: Explanation, column: dict[str, Any]) -> None:
    paths = best_paths(task, model, name, scores, k)
    column["nbest"] = [{"probability": round(p, 6), "tags": tags, "model_tags": own} for p, own, tags in paths]
    rows = []
    first = paths[0][1] if paths else []
    for rank, (p, own, tags) in enumerate(paths, 1):
        if task.kinds[name] == "span":
            found = task.entities(tokens, tags)
            shown = ", ".join(f"[{markdown_escape(e['type'])} {markdown_escape(e['text'])}]" for e in found) or \
                "(no entity)"
        else:
            shown = " ".join(markdown_escape(t) for t in tags)
        changed = " ".join(f"{markdown_escape(tok)}/{markdown_escape(t)}" for tok, t, t1 in zip(tokens, own, first)
                           if t != t1) or "(the best path)"
        rows.append([str(rank), f"{p:.4f}", shown, changed])
    total = sum(p for p, _, _ in paths)
    what = "entities (read as conlleval reads them)" if task.kinds[name] == "span" else "tags"
    explanation.notes += [f"**{len(paths)} best tag sequences ({name})**, together {total:.4f} of the probability; "
                          f"the last column lists the tags (the model's, {task.tag_scheme}) where a path differs from "
                          f"the best:" if task.kinds[name] == "span" else
                          f"**{len(paths)} best tag sequences ({name})**, together {total:.4f} of the probability:",
                          "", *markdown_table(["rank", "probability", what, "differs from path 1"], rows), ""]


def _targets(tokens: list[str], tags: list[str], task: ExplainedTagger, target: str | None) -> list[dict[str, Any]]:
    found = task.entities(tokens, tags)
    if target is None:
        return found[:MAX_SALIENT]
    return [e for e in found if target in (e["type"], e["text"])]


def _saliency(task: ExplainedTagger, model: nn.Module, name: str, batch: dict[str, torch.Tensor], pred_ids: list[int],
              tags: list[str], tokens: list[str], index: int, options: ExplainOptions, out: Path,
              explanation: Explanation, column: dict[str, Any]) -> None:
    chosen = _targets(tokens, tags, task, options.target)
    column["saliency"] = []
    if not chosen:
        why = f"no predicted entity is '{options.target}' (a type or the entity's words)" if options.target else \
            "the model predicts no entity"
        explanation.notes += [f"_No saliency for {name}: {why}._", ""]
        return
    embedding = getattr(_unwrapped(model), "word_embedding", None)
    if embedding is None:  # an ensemble: each member has its own embeddings, and no one layer to attribute over
        explanation.notes += [f"_No saliency for {name}: the model is an ensemble, whose members each embed the "
                              f"words their own way._", ""]
        return
    for j, entity in enumerate(chosen, 1):
        start, end = entity["start"], entity["end"]
        forward = _entity_log_probability(model, name, batch, start, end, pred_ids)
        attributions, delta = layer_integrated_gradients(forward, embedding, batch["words"],
                                                         baselines=torch.zeros_like(batch["words"]),
                                                         steps=options.steps)
        per_token = attributions[0].sum(-1).cpu()
        with torch.no_grad():
            probability = math.exp(float(forward(batch["words"])[0]))
        column["saliency"].append({"entity": entity, "probability": round(probability, 6),
                                   "attributions": [round(float(a), 6) for a in per_token],
                                   "convergence_delta": round(delta, 6)})
        file = f"{index:02d}_saliency_{name}_{j}.png"
        _saliency_figure(tokens, per_token, start, end, out / file,
                         title=f"{name}: which words make [{entity['type']} {entity['text']}] (sentence {index})")
        top = sorted(range(len(tokens)), key=lambda t: -abs(float(per_token[t])))[:3]
        explanation.figures.append(Figure(
            f"Saliency: {entity['type']} {markdown_escape(entity['text'])} ({name})", file,
            f"Integrated gradients ({options.steps} steps, from zero vectors) over the word embeddings of log P(the "
            f"entity's tags | sentence) = {math.log(probability):.3f} (P = {probability:.3f}), summed over each "
            f"embedding: red raises it, blue lowers it; the entity's words are shaded. Largest: " +
            ", ".join(f"'{markdown_escape(tokens[t])}' {float(per_token[t]):+.3f}" for t in top) +
            f". Convergence delta {delta:.2g}."))


def _entity_log_probability(model: nn.Module, name: str, batch: dict[str, torch.Tensor], start: int, end: int,
                            pred_ids: list[int]) -> Any:
    """forward(words [n, T]) -> [n]: log P(tags[start:end] = the predicted ones | sentence), the difference of two
    log-partitions: over the paths that give the entity its tags, and over all paths. Captum calls it with the
    sentence repeated along the batch (one row per integration step)."""
    def forward(words: torch.Tensor) -> torch.Tensor:
        n = words.shape[0]
        repeated = {**batch, "words": words, "lengths": batch["lengths"].repeat(n),
                    "char_index": batch["char_index"].repeat(n, 1)}
        scores = model(repeated, scores=True)[f"scores_{name}"]
        emissions, first, last, transitions = _chain(model, name, scores.float())
        mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        fixed = torch.zeros_like(emissions, dtype=torch.bool)
        fixed[:, start:end] = True
        keep = torch.zeros_like(fixed)
        for t in range(start, end):
            keep[:, t, pred_ids[t]] = True
        constrained = emissions.masked_fill(fixed & ~keep, -1e4)
        return log_partition(constrained, mask, first, last, transitions) - \
            log_partition(emissions, mask, first, last, transitions)
    return forward


def _saliency_figure(tokens: list[str], values: torch.Tensor, start: int, end: int, path: Path, *, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(FIGSIZE[0], 1.2 + 0.55 * len(tokens)), FIGSIZE[1]))
    ax.axvspan(start - 0.5, end - 0.5, color="gold", alpha=0.3, label="the entity")
    ax.bar(range(len(tokens)), values.tolist(), color=["tab:red" if v > 0 else "tab:blue" for v in values.tolist()])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right")
    ax.grid(axis="x", visible=False)
    ax.set(title=title, ylabel="attribution (integrated gradients)")
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    fig.savefig(path)
    plt.close(fig)
