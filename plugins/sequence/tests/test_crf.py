"""CRF likelihood and Viterbi decoding checked against brute-force enumeration of every tag path, against plain
autograd through the forward algorithm and against n-best decoding; the layer keeps pytorch-crf's parameter names."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from deepcourse_sequence.crf import (
    CRF,
    crf_decode,
    crf_log_likelihood,
    log_partition,
    nbest_paths,
    tag_marginals,
    viterbi_decode,
)


def path_score(crf: CRF, emissions: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    score = crf.start_transitions[path[0]] + crf.end_transitions[path[-1]]
    for t, tag in enumerate(path):
        score = score + emissions[t, tag]
        if t:
            score = score + crf.transitions[path[t - 1], tag]
    return score


@pytest.fixture
def tiny() -> tuple[CRF, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    num_tags, lengths = 3, torch.tensor([4, 1, 3, 2])
    crf = CRF(num_tags, batch_first=True)
    with torch.no_grad():  # larger than the default init, so paths differ clearly
        for p in crf.parameters():
            p.normal_()
    emissions = torch.randn(len(lengths), int(lengths.max()), num_tags, dtype=torch.float64)
    crf = crf.double()
    mask = torch.arange(emissions.shape[1]) < lengths.unsqueeze(1)
    tags = torch.randint(0, num_tags, emissions.shape[:2]).masked_fill(~mask, -100)
    return crf, emissions, tags, mask


def test_log_likelihood_matches_enumeration(tiny) -> None:
    crf, emissions, tags, mask = tiny
    ours = crf_log_likelihood(crf, emissions, tags, mask)
    for b in range(len(tags)):
        n = int(mask[b].sum())
        paths = list(itertools.product(range(emissions.shape[2]), repeat=n))
        log_z = torch.logsumexp(torch.stack([path_score(crf, emissions[b], p) for p in paths]), 0)
        gold = path_score(crf, emissions[b], tuple(tags[b, :n].tolist()))
        assert ours[b].item() == pytest.approx((gold - log_z).item(), abs=1e-9)


def plain_log_likelihood(crf: CRF, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same log-likelihood in plain differentiable operations: the gold path scored sentence by sentence, minus
    the forward algorithm's log-partition (autograd differentiates both, no custom backward)."""
    gold = torch.stack([path_score(crf, emissions[b], tuple(tags[b, :int(mask[b].sum())].tolist()))
                        for b in range(len(tags))])
    return gold - log_partition(emissions, mask, crf.start_transitions, crf.end_transitions, crf.transitions)


def test_gradients_match_plain_autograd(tiny) -> None:
    crf, emissions, tags, mask = tiny
    emissions.requires_grad_(True)
    weights = torch.randn(len(tags), dtype=torch.float64)  # a non-uniform upstream gradient
    params = [emissions, crf.transitions, crf.start_transitions, crf.end_transitions]
    ours = torch.autograd.grad((crf_log_likelihood(crf, emissions, tags, mask) * weights).sum(), params)
    theirs = torch.autograd.grad((plain_log_likelihood(crf, emissions, tags, mask) * weights).sum(), params)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda e: crf_log_likelihood(crf, e, tags, mask), (emissions,))


def viterbi_one_by_one(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each sentence's best path from n-best decoding (k=1), an independent per-sentence implementation."""
    return [nbest_paths(emissions[b, :int(mask[b].sum())], crf.start_transitions, crf.end_transitions,
                        crf.transitions, 1)[0][1] for b in range(len(mask))]


def test_viterbi_matches_enumeration_and_nbest(tiny) -> None:
    crf, emissions, _, mask = tiny
    decoded = crf_decode(crf, emissions, mask)
    for b in range(len(mask)):
        n = int(mask[b].sum())
        best = max(itertools.product(range(emissions.shape[2]), repeat=n),
                   key=lambda p: path_score(crf, emissions[b], p).item())
        assert decoded[b, :n].tolist() == list(best)
        assert (decoded[b, n:] == -100).all()
    assert [decoded[b, :int(mask[b].sum())].tolist() for b in range(len(mask))] == viterbi_one_by_one(
        crf, emissions, mask)


def test_viterbi_on_a_larger_random_batch() -> None:
    torch.manual_seed(1)
    crf = CRF(9, batch_first=True)
    lengths = torch.randint(1, 30, (64,))
    emissions = torch.randn(64, int(lengths.max()), 9)
    mask = torch.arange(emissions.shape[1]) < lengths.unsqueeze(1)
    decoded = viterbi_decode(emissions, mask, crf.start_transitions, crf.end_transitions, crf.transitions, pad=0)
    assert [decoded[b, :n].tolist() for b, n in enumerate(lengths.tolist())] == viterbi_one_by_one(
        crf, emissions, mask)


def test_the_layer_loads_weights_saved_with_pytorch_crf() -> None:
    """Runs trained while the plugin used pytorch-crf saved its three parameters under these names and shapes: they
    load into today's head strictly (nothing missing, nothing unexpected), and the values are the ones used."""
    from deepcourse_sequence.models.heads import CRFHead

    torch.manual_seed(2)
    saved = {"proj.weight": torch.randn(5, 8), "proj.bias": torch.randn(5), "crf.start_transitions": torch.randn(5),
             "crf.end_transitions": torch.randn(5), "crf.transitions": torch.randn(5, 5)}  # pytorch-crf's keys
    head = CRFHead(8, 5)
    head.load_state_dict(saved, strict=True)
    assert torch.equal(head.crf.transitions, saved["crf.transitions"])
    assert sorted(head.state_dict()) == sorted(saved)
    fresh = CRF(5)
    assert all(p.detach().abs().max() <= 0.1 for p in fresh.parameters())  # pytorch-crf's initialisation


def enumerate_paths(crf: CRF, emissions: torch.Tensor) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Every tag path of one sentence (emissions [T, K]) and its score."""
    paths = list(itertools.product(range(emissions.shape[1]), repeat=emissions.shape[0]))
    return paths, torch.stack([path_score(crf, emissions, p) for p in paths])


def test_log_partition_and_marginals_match_enumeration(tiny) -> None:
    crf, emissions, _, mask = tiny
    log_z = log_partition(emissions, mask, crf.start_transitions, crf.end_transitions, crf.transitions)
    marginals = tag_marginals(emissions, mask, crf.start_transitions, crf.end_transitions, crf.transitions)
    for b in range(len(mask)):
        n = int(mask[b].sum())
        paths, scores = enumerate_paths(crf, emissions[b, :n])
        assert log_z[b].item() == pytest.approx(torch.logsumexp(scores, 0).item(), abs=1e-9)
        probs = (scores - torch.logsumexp(scores, 0)).exp().detach()
        for t in range(n):
            for k in range(emissions.shape[2]):
                expected = sum(float(p) for path, p in zip(paths, probs) if path[t] == k)
                assert marginals[b, t, k].item() == pytest.approx(expected, abs=1e-6)
        assert marginals[b, :n].sum(-1).tolist() == pytest.approx([1.0] * n, abs=1e-6)
        assert not marginals[b, n:].any()  # nothing past the sentence's end


@pytest.mark.parametrize("k", [1, 3, 7, 81, 100])
def test_nbest_paths_are_the_k_best_of_every_path(tiny, k: int) -> None:
    """Path 1 is Viterbi's; the k paths are the k highest-scoring of all K^T (checked by enumeration), their
    probabilities sorted and summing to at most 1 (to 1 when every path is listed)."""
    crf, emissions, _, mask = tiny
    viterbi = crf_decode(crf, emissions, mask)
    for b in range(len(mask)):
        n = int(mask[b].sum())
        paths, scores = enumerate_paths(crf, emissions[b, :n])
        log_z = torch.logsumexp(scores, 0)
        found = nbest_paths(emissions[b, :n], crf.start_transitions, crf.end_transitions, crf.transitions, k)
        assert len(found) == min(k, len(paths))
        assert found[0][1] == viterbi[b, :n].tolist()
        expected = sorted(zip(scores.tolist(), paths), reverse=True)[:k]
        assert [s for s, _ in found] == pytest.approx([s for s, _ in expected], abs=1e-9)
        for score, path in found:  # each path carries its own score (ties may order equal scores either way)
            assert score == pytest.approx(path_score(crf, emissions[b, :n], tuple(path)).item(), abs=1e-9)
        assert len({tuple(p) for _, p in found}) == len(found)
        probs = [math.exp(s - float(log_z.detach())) for s, _ in found]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
        if len(found) == len(paths):
            assert sum(probs) == pytest.approx(1.0, abs=1e-9)


def test_nbest_asks_no_more_memory_than_there_are_paths(tiny) -> None:
    """k is cut to the number of paths a sentence has (K^T) before anything is allocated: `predict --nbest` with a
    huge K would otherwise ask for K x K floats per word."""
    crf, emissions, _, mask = tiny
    n = int(mask[0].sum())
    every = enumerate_paths(crf, emissions[0, :n])[0]
    found = nbest_paths(emissions[0, :n], crf.start_transitions, crf.end_transitions, crf.transitions, 10**15)
    assert len(found) == len(every) and len({tuple(p) for _, p in found}) == len(every)
