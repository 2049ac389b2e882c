"""Batched Viterbi decoding on the parameters of a pytorch-crf `CRF`.

pytorch-crf's `decode` backtracks one sentence at a time in Python and returns lists; for CoNLL-sized evaluation
that loop costs more than the network. Here both the forward pass and the backtrace run on whole-batch tensors
(one small tensor operation per time step, no host synchronisation), and the result is a padded tensor ready to
be gathered across processes. `tests/sequence/test_crf.py` checks it against `CRF.decode` and against brute-force
enumeration of every tag path.
"""
from __future__ import annotations

import torch
from torchcrf import CRF


def viterbi_decode(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                   transitions: torch.Tensor, pad: int = -100) -> torch.Tensor:
    """Best tag path of each sentence.

    emissions [B, T, K], mask [B, T] (bool, each row a prefix of True: the sentence, at least one token),
    start/end [K], transitions [K, K] with transitions[i, j] the score of tag i followed by tag j.
    Returns [B, T] tag ids with `pad` after each sentence's end.
    """
    batch, length, _ = emissions.shape
    mask = mask.bool()
    score = start + emissions[:, 0]  # best score of a path ending in each tag, [B, K]
    history = []
    for t in range(1, length):
        best, prev = (score.unsqueeze(2) + transitions).max(dim=1)  # over the previous tag
        score = torch.where(mask[:, t:t + 1], best + emissions[:, t], score)
        history.append(prev)
    current = (score + end).argmax(dim=1)
    tags = torch.empty(batch, length, dtype=torch.long, device=emissions.device)
    for t in range(length - 1, 0, -1):
        tags[:, t] = current
        previous = history[t - 1].gather(1, current.unsqueeze(1)).squeeze(1)
        current = torch.where(mask[:, t], previous, current)  # past a sentence's end, keep its last tag
    tags[:, 0] = current
    return tags.masked_fill_(~mask, pad)


def crf_decode(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor, pad: int = -100) -> torch.Tensor:
    """`viterbi_decode` with the parameters of a batch-first pytorch-crf layer."""
    if not crf.batch_first:
        emissions, mask = emissions.transpose(0, 1), mask.transpose(0, 1)
    return viterbi_decode(emissions, mask, crf.start_transitions, crf.end_transitions, crf.transitions, pad)
