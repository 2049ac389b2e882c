"""What `deepcourse export` writes for a tagger: the network up to each label column's per-token tag scores.

The exported graph takes a batch as `TaggedSentences` makes it (word ids, casing ids, lengths, the batch's distinct
word forms as character ids with their lengths, and each token's form) and returns `scores_<label>` [B, T, K] per
label column. Decoding stays on the host: a softmax head's tag is the argmax, a CRF's path is Viterbi's over the
scores with the CRF's start, end and transition scores, which the facts carry (`heads`), and which
`deepcourse.results.viterbi.decode_output` runs in NumPy. ONNX has no dynamic program that its runtimes run well,
and the same split keeps the three formats alike. The vocabularies, word options and tag names are in the facts.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from deepcourse.api import ExportGraph

from .batching import CASINGS
from .models.heads import CRFHead
from .models.recurrent import SequenceTagger

#: the sequence-tagging task (not imported: `.task` imports this module)
SequenceTagging = Any

#: the inputs of the exported graph, in order, and their variable axes
INPUTS: dict[str, dict[int, str]] = {
    "words": {0: "batch", 1: "tokens"}, "casing": {0: "batch", 1: "tokens"}, "lengths": {0: "batch"},
    "chars": {0: "forms", 1: "characters"}, "char_lengths": {0: "forms"}, "char_index": {0: "batch", 1: "tokens"}}
#: two sentences to write the file with, three others (other lengths, other forms) to check it on
WRITE_WITH = ["Alice Smith flew to Paris .", "Acme Corp hired Bob on Monday morning in Berlin ."]
CHECK_ON = ["The EU rejected German calls to boycott British lamb on Friday .", "Peter Blackburn",
            "BRUSSELS 1996-08-22"]


class Emissions(nn.Module):
    """The tagger's encoder and heads' projections: tensors in, each label's tag scores out (no decoding)."""

    def __init__(self, tagger: SequenceTagger) -> None:
        super().__init__()
        self.tagger = tagger

    def forward(self, words: torch.Tensor, casing: torch.Tensor, lengths: torch.Tensor, chars: torch.Tensor,
                char_lengths: torch.Tensor, char_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = {"words": words, "casing": casing, "lengths": lengths, "chars": chars, "char_lengths": char_lengths,
                 "char_index": char_index}
        states = self.tagger.encode(batch)
        return tuple(self.tagger.head(name).scores(states) for name in self.tagger.heads)


def export_graph(task: SequenceTagging, model: nn.Module) -> ExportGraph:
    """The emissions graph on real sentences batched with the run's vocabularies, and the facts to batch and decode
    with."""
    tagger: SequenceTagger = model  # type: ignore[assignment]  # the sequence task's models are SequenceTaggers
    device = torch.device("cpu")

    def batch(sentences: list[str]) -> dict[str, torch.Tensor]:
        made = task.batch_of([s.split() for s in sentences], device)
        return {name: made[name] for name in INPUTS}

    heads = {name: head_facts(task, tagger, name) for name in tagger.heads}
    facts: dict[str, Any] = {
        "preprocessing": "inputs as deepcourse_sequence's TaggedSentences batches whitespace-split sentences: word "
                         "ids from `words` (keyed as word_options say), casing ids, lengths, the batch's distinct "
                         "word forms as character ids from `chars`, and each token's form (char_index)",
        "labels": list(tagger.heads), "heads": heads, "tag_scheme": task.tag_scheme, "file_scheme": task.file_scheme,
        "kinds": dict(task.kinds), "casings": list(CASINGS), "word_options": task.word_options.model_dump(),
        "words": task.words.to_dict() if task.words else None, "chars": task.chars.to_dict() if task.chars else None,
        "decode": "per label: scores_<label>[b, :lengths[b]] -> argmax, or Viterbi with the head's start, end and "
                  "transitions for a CRF (deepcourse.results.viterbi.decode_output)"}
    return ExportGraph(Emissions(tagger), batch(WRITE_WITH), [f"scores_{name}" for name in tagger.heads],
                       dynamic=INPUTS, check=batch(CHECK_ON), facts=facts)


def head_facts(task: SequenceTagging, tagger: SequenceTagger, name: str) -> dict[str, Any]:
    """A label's tag names (the model's outputs, in the training scheme) and how to decode its scores."""
    head = tagger.head(name)
    tags = list(task.tags.get(name, []))[:task.num_trained.get(name, 0)] or \
        [str(i) for i in range(head.proj.out_features)]
    if not isinstance(head, CRFHead):
        return {"tags": tags, "decoder": "argmax"}
    crf = head.crf
    return {"tags": tags, "decoder": "crf", "start": rows(crf.start_transitions), "end": rows(crf.end_transitions),
            "transitions": rows(crf.transitions)}


def rows(tensor: torch.Tensor) -> Any:
    return tensor.detach().float().cpu().tolist()


def restored(task: SequenceTagging, facts: Mapping[str, Any]) -> None:
    """A task not set up from a run (the model zoo): vocabularies of the example sentences themselves."""
    from .vocab import VocabOptions, Vocabulary

    tokens = sorted({t for s in WRITE_WITH + CHECK_ON for t in s.split()})
    task.words, task.chars = Vocabulary(tokens), Vocabulary(sorted(set("".join(tokens))))
    task.word_options = VocabOptions()
    task.setup_example(facts)
