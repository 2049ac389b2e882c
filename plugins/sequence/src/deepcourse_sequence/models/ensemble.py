"""Several trained taggers as one (`deepcourse ensemble`), called as a `SequenceTagger` is.

Each label column is combined on its own, from the members' per-token scores:

- CRF heads: the emission scores and the transition matrices are averaged, and the averaged CRF decodes once. The
  result is again a linear-chain CRF (its distribution over whole tag paths is the members' normalised geometric
  mean), so Viterbi gives one consistent path, never a move the scheme forbids, and the marginals, n-best paths and
  losses of `explain` and `predict --nbest` mean what they mean for one model. A vote over spans would need a rule
  for overlapping spans and ties (two members, two answers), gives no probabilities, and cannot make use of a
  member that is nearly sure of the runner-up.
- softmax heads: the members' per-token tag probabilities are averaged (a classifier's ensemble, token by token).
- a column whose members mix the two: each softmax head read as a chain with zero transitions (`Head.chain`), then
  averaged as CRFs are.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import nn

from ..crf import CRF
from .heads import CRFHead, Head, SoftmaxHead
from .recurrent import SequenceTagger, head_outputs


class AveragedCRF(nn.Module):
    """The mean of the members' CRF parameters, as a batch-first `CRF` layer shows them (start, end, transitions;
    no weights of its own: read afresh from the members on every call, so loading their weights is all it takes)."""

    batch_first = True

    def __init__(self, chains: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.start_transitions, self.end_transitions, self.transitions = (
            torch.stack(parts).mean(0) for parts in zip(*chains))


class MeanCRFHead(CRFHead):
    """A CRF head whose emissions are the members' mean and whose CRF is their mean CRF: loss, decoding and `chain`
    are CRFHead's own."""

    def __init__(self, heads: Sequence[Head]) -> None:
        nn.Module.__init__(self)
        self.members = list(heads)  # a plain list: the weights stay the ensemble's members'
        zero = next(iter(heads[0].parameters()))
        chains = [h.chain(zero.new_zeros(1, 1, h.proj.out_features))[1:] for h in heads]
        self.crf = cast(CRF, AveragedCRF(chains))  # CRF's interface (its three tensors), the members' mean values

    def combine(self, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        """Emissions of the ensemble from each member's tag scores (a softmax member's as log-probabilities)."""
        return torch.stack([h.chain(s)[0] for h, s in zip(self.members, scores)]).mean(0)


class MeanSoftmaxHead(SoftmaxHead):
    """A softmax head whose scores are the log of the members' mean tag probabilities: argmax, cross-entropy and
    `chain` (a log-softmax of log-probabilities changes nothing) are SoftmaxHead's own."""

    def __init__(self, heads: Sequence[Head]) -> None:
        nn.Module.__init__(self)
        self.members = list(heads)

    def combine(self, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        log_probs = torch.stack([s.float().log_softmax(-1) for s in scores])
        return torch.logsumexp(log_probs, 0) - math.log(len(scores))


class TaggerEnsemble(nn.Module):
    """Taggers trained on the same data and tags, as one: `forward` and `head` as `SequenceTagger`'s."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        taggers = self.taggers()
        names = [list(t.heads) for t in taggers]
        if any(n != names[0] for n in names):
            raise ValueError(f"the taggers predict different label columns: {names}")

    def taggers(self) -> list[SequenceTagger]:
        return [cast(SequenceTagger, m) for m in self.members]

    def head(self, name: str) -> MeanCRFHead | MeanSoftmaxHead:
        """Label `name`'s combined head, from the members' current weights."""
        heads = [t.head(name) for t in self.taggers()]
        return MeanSoftmaxHead(heads) if all(isinstance(h, SoftmaxHead) for h in heads) else MeanCRFHead(heads)

    def forward(self, batch: Mapping[str, torch.Tensor], decode: bool = False,
                scores: bool = False) -> dict[str, torch.Tensor]:
        states = [t.encode(batch) for t in self.taggers()]
        mask = torch.arange(states[0].shape[1], device=states[0].device) < batch["lengths"].unsqueeze(1)
        out: dict[str, torch.Tensor] = {}
        for name in self.taggers()[0].heads:
            head = self.head(name)
            tag_scores = head.combine([t.head(name).scores(s) for t, s in zip(self.taggers(), states)])
            out.update(head_outputs(name, head, tag_scores, batch, mask, decode=decode, scores=scores))
        return out
