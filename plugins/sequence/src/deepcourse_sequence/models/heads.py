"""Output layers of a tagger: one per label column, on the shared encoder's states.

Both turn the encoder's states into per-token tag scores (`scores`, [B, T, K]) once; from those scores they return
per-sentence losses (summed over the sentence's tokens), so a task can weight heads and choose the batch reduction,
and decode to a padded [B, T] tensor of tag ids. Evaluation needs both, from one projection. `chain` shows either
head as a linear-chain model (a softmax head is one with zero transitions), for tag marginals and n-best paths.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..crf import CRF, crf_decode, crf_log_likelihood

#: a head seen as a linear-chain model: emissions [B, T, K], start [K], end [K], transitions [K, K]
Chain = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class SoftmaxHead(nn.Module):
    """Independent per-token classification: each tag chosen on its own."""

    def __init__(self, in_features: int, num_tags: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, num_tags)

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        return self.proj(states)

    def loss(self, scores: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        token_loss = F.cross_entropy(scores.transpose(1, 2), tags, ignore_index=-100, reduction="none")
        return token_loss.sum(dim=1)

    def decode(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return scores.argmax(dim=-1).masked_fill_(~mask, -100)

    def chain(self, scores: torch.Tensor) -> Chain:
        """The head as a linear chain whose transitions are all zero: its path probabilities are the products of the
        per-token softmax probabilities, so marginals and n-best paths are computed as for a CRF."""
        k = scores.shape[-1]
        zeros = scores.new_zeros(k, dtype=torch.float32)
        return scores.float().log_softmax(-1), zeros, zeros, scores.new_zeros(k, k, dtype=torch.float32)


class CRFHead(nn.Module):
    """A linear-chain CRF (`deepcourse_sequence.crf.CRF`) on per-token scores: the whole tag sequence is scored and
    decoded jointly, so transitions such as O -> I-PER are learnt to be impossible."""

    def __init__(self, in_features: int, num_tags: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, num_tags)
        self.crf = CRF(num_tags, batch_first=True)

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        return self.proj(states)

    def loss(self, scores: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return -crf_log_likelihood(self.crf, scores, tags, mask)

    def decode(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return crf_decode(self.crf, scores, mask)

    def chain(self, scores: torch.Tensor) -> Chain:
        """(emissions, start, end, transitions) of the CRF, for marginals and n-best paths."""
        return scores.float(), self.crf.start_transitions, self.crf.end_transitions, self.crf.transitions


Head = SoftmaxHead | CRFHead
HEADS: dict[str, type[Head]] = {"softmax": SoftmaxHead, "crf": CRFHead}
