"""A linear-chain CRF layer: its parameters, a fast likelihood and batched Viterbi decoding.

`CRF` holds the three parameters under pytorch-crf's names, shapes and initialisation (the plugin used that package
until it was dropped: it was last released in 2019 and only its parameters were still used), so the weights of runs
trained with it load unchanged. The computations are this module's own, written for speed on a CPU training step:

- `viterbi_decode` runs the forward pass and the backtrace on whole-batch tensors (no host synchronisation) and
  returns a padded tensor ready to be gathered across processes.
- `crf_log_likelihood` scores the gold path with a few vectorised operations and computes the log-partition with the
  forward algorithm under `no_grad`; its gradient (the tag marginals) comes from the backward algorithm, in one
  custom autograd function, instead of a dozen autograd nodes per time step.

`plugins/sequence/tests/test_crf.py` checks them against brute-force enumeration of every path and against each other.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class CRF(nn.Module):
    """The transition scores of a linear-chain CRF over `num_tags` tags: `start_transitions` [K],
    `end_transitions` [K] and `transitions` [K, K] (tag i followed by tag j), uniform in [-0.1, 0.1] at first as
    pytorch-crf initialised them. The state-dict keys are pytorch-crf's, so old checkpoints load as they are."""

    def __init__(self, num_tags: int, batch_first: bool = False) -> None:
        if num_tags <= 0:
            raise ValueError(f"invalid number of tags: {num_tags}")
        super().__init__()
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for parameter in (self.start_transitions, self.end_transitions, self.transitions):
            nn.init.uniform_(parameter, -0.1, 0.1)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"


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
    """`viterbi_decode` with the parameters of a `CRF` layer."""
    if not crf.batch_first:
        emissions, mask = emissions.transpose(0, 1), mask.transpose(0, 1)
    return viterbi_decode(emissions, mask, crf.start_transitions, crf.end_transitions, crf.transitions, pad)


def _log_matmul(log_x: torch.Tensor, exp_w: torch.Tensor) -> torch.Tensor:
    """log(exp(log_x) @ exp_w), stable for each row: a matrix product instead of a [B, K, K] logsumexp, which
    is 3-8x faster on CPU (the recursion below runs once per time step)."""
    top = log_x.amax(dim=1, keepdim=True)
    return ((log_x - top).exp() @ exp_w).log() + top


class _LogPartition(torch.autograd.Function):
    """log Z of a linear-chain CRF per sentence; the gradient is the expected tag (pair) counts."""

    @staticmethod
    def forward(ctx: Any, emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                transitions: torch.Tensor) -> torch.Tensor:
        length = emissions.shape[1]
        shift = transitions.max()
        exp_transitions = (transitions - shift).exp()
        alpha = start + emissions[:, 0]
        alphas = [alpha]
        for t in range(1, length):
            step = _log_matmul(alpha, exp_transitions) + (emissions[:, t] + shift)
            alpha = torch.where(mask[:, t:t + 1], step, alpha)
            alphas.append(alpha)
        log_z = torch.logsumexp(alpha + end, dim=1)
        ctx.save_for_backward(emissions, mask, end, transitions, torch.stack(alphas, 1), log_z)
        return log_z

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        emissions, mask, end, transitions, alphas, log_z = ctx.saved_tensors
        length = emissions.shape[1]
        shift = transitions.max()
        exp_transitions_t = (transitions - shift).exp().t()
        beta = end.expand_as(alphas[:, 0])
        betas = [beta]
        for t in range(length - 2, -1, -1):  # beta_t: log-score of every continuation from tag i at t
            step = _log_matmul(emissions[:, t + 1] + beta, exp_transitions_t) + shift
            beta = torch.where(mask[:, t + 1:t + 2], step, beta)
            betas.append(beta)
        beta_all = torch.stack(betas[::-1], 1)
        norm = log_z.view(-1, 1, 1)
        scale = grad.view(-1, 1, 1)
        unary = (alphas + beta_all - norm).exp() * mask.unsqueeze(2) * scale  # P(y_t = k), [B, T, K]
        pairs = (alphas[:, :-1].unsqueeze(3) + transitions + (emissions[:, 1:] + beta_all[:, 1:]).unsqueeze(2)
                 - norm.unsqueeze(3)).exp() * (mask[:, 1:].view(*mask[:, 1:].shape, 1, 1) * scale.unsqueeze(3))
        lengths = mask.sum(1)
        last = (alphas.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, alphas.shape[2])).squeeze(1) + end
                - log_z.unsqueeze(1)).exp() * grad.unsqueeze(1)
        return unary, None, unary[:, 0].sum(0), last.sum(0), pairs.sum((0, 1))


def crf_log_likelihood(crf: CRF, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sentence log p(tags | emissions) of a batch-first CRF layer, equal to `crf(emissions, tags, mask,
    reduction="none")`. Tags at padding positions are ignored (any value)."""
    mask = mask.bool()
    tags = tags.masked_fill(~mask, 0)
    weights = mask.to(emissions.dtype)
    gold = (emissions.gather(2, tags.unsqueeze(2)).squeeze(2) * weights).sum(1)
    gold = gold + (crf.transitions[tags[:, :-1], tags[:, 1:]] * weights[:, 1:]).sum(1)
    last = tags.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)
    gold = gold + crf.start_transitions[tags[:, 0]] + crf.end_transitions[last]
    return gold - _LogPartition.apply(emissions, mask, crf.start_transitions, crf.end_transitions, crf.transitions)


# -- inspection: exact probabilities of tags and paths (explain, predict --nbest) ----------------------------------
def log_partition(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                  transitions: torch.Tensor) -> torch.Tensor:
    """log Z per sentence by the forward algorithm in plain differentiable operations (slower than `_LogPartition`,
    but its gradient can itself be differentiated: token saliency needs d log p / d embeddings of a marginal)."""
    mask = mask.bool()
    alpha = start + emissions[:, 0]
    for t in range(1, emissions.shape[1]):
        step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + emissions[:, t]
        alpha = torch.where(mask[:, t:t + 1], step, alpha)
    return torch.logsumexp(alpha + end, dim=1)


def tag_marginals(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                  transitions: torch.Tensor) -> torch.Tensor:
    """P(y_t = k | sentence) [B, T, K] (zeros past each sentence's end): the gradient of log Z with respect to the
    emissions, which is the forward-backward algorithm's result without a second implementation of it."""
    with torch.enable_grad():
        leaf = emissions.detach().float().requires_grad_(True)
        log_z = log_partition(leaf, mask, start.detach().float(), end.detach().float(), transitions.detach().float())
        (grad,) = torch.autograd.grad(log_z.sum(), leaf)
    return grad * mask.unsqueeze(2)


def nbest_paths(emissions: torch.Tensor, start: torch.Tensor, end: torch.Tensor, transitions: torch.Tensor,
                k: int) -> list[tuple[float, list[int]]]:
    """The k best tag paths of one sentence (emissions [T, K]) with their scores, best first: list Viterbi, keeping
    the k best partial paths ending in each tag at each position (NCRF++'s n-best decoding). Fewer than k when the
    sentence has fewer paths. Path 1 is the Viterbi path; exp(score - log Z) is a path's probability. Memory grows
    with k, so k is first cut to the number of paths there are (tags ** length)."""
    emissions, start, end, transitions = (x.detach().double().cpu() for x in (emissions, start, end, transitions))
    length, tags = emissions.shape
    k = min(k, tags ** min(length, 64))  # 2 ** 64 paths: more than any k that fits in memory
    neg = float("-inf")
    best = torch.full((tags, k), neg, dtype=torch.float64)  # [tag, rank]: score of the rank-th best path ending here
    best[:, 0] = start + emissions[0]
    pointers = []  # per position t >= 1: [rank, tag] -> index into the previous position's [tag, rank], flattened
    for t in range(1, length):
        candidates = (best.unsqueeze(2) + transitions.unsqueeze(1)).reshape(tags * k, tags)  # [(prev, rank), tag]
        values, index = candidates.topk(k, dim=0)  # [rank, tag]
        best = values.t() + emissions[t].unsqueeze(1)
        pointers.append(index)
    final = (best + end.unsqueeze(1)).reshape(-1)  # [(tag, rank)]
    scores, order = final.topk(min(k, final.numel()))
    paths = []
    for score, flat in zip(scores.tolist(), order.tolist()):
        if score == neg:
            break
        tag, rank = divmod(flat, k)
        path = [tag]
        for index in reversed(pointers):
            tag, rank = divmod(int(index[rank, tag]), k)
            path.append(tag)
        paths.append((score, path[::-1]))
    return paths
