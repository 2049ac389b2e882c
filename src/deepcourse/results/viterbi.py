"""Decoding an exported tagger's scores on the host, in NumPy: what a user of an exported BiLSTM-CRF runs after it.

A linear-chain CRF's best path is a dynamic program over the whole sentence (Viterbi), which ONNX cannot express
without loops that its runtimes run slowly; `deepcourse export` therefore writes the network up to the per-token
tag scores (the emissions) and puts the CRF's start, end and transition scores in the exported file's facts
(FILE.json, and an ONNX file's metadata). `decode_output` turns one output of the file into tag names with them.
Only NumPy is needed, so an application can decode without torch.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def viterbi(emissions: np.ndarray, start: np.ndarray, end: np.ndarray, transitions: np.ndarray) -> list[int]:
    """The best tag path of one sentence: emissions [T, K] (its real tokens only), start [K], end [K],
    transitions [K, K] with transitions[i, j] the score of tag i followed by tag j."""
    emissions = np.asarray(emissions, dtype=np.float64)
    transitions = np.asarray(transitions, dtype=np.float64)
    score = np.asarray(start, dtype=np.float64) + emissions[0]
    history = []
    for t in range(1, len(emissions)):
        candidates = score[:, None] + transitions  # [previous tag, tag]
        history.append(candidates.argmax(axis=0))
        score = candidates.max(axis=0) + emissions[t]
    best = int((score + np.asarray(end, dtype=np.float64)).argmax())
    path = [best]
    for back in reversed(history):
        best = int(back[best])
        path.append(best)
    return path[::-1]


def decode_output(scores: np.ndarray, lengths: Sequence[int], head: Mapping[str, Any]) -> list[list[str]]:
    """Tag names of each sentence from one `scores_<label>` output [B, T, K] of an exported tagger and the batch's
    sentence lengths; `head` is the label's entry of the facts' "heads" (its tags and decoder: "crf" with start, end
    and transitions, or "argmax")."""
    tags = head["tags"]
    out = []
    for row, length in zip(np.asarray(scores), lengths):
        row = row[:int(length)]
        if head["decoder"] == "crf":
            ids = viterbi(row, np.asarray(head["start"]), np.asarray(head["end"]), np.asarray(head["transitions"]))
        else:
            ids = [int(i) for i in row.argmax(axis=-1)]
        out.append([tags[i] for i in ids])
    return out
