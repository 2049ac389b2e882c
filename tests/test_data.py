"""Core data plumbing: the length-grouped sampler keeps batches random but alike in length, reproducibly."""
from __future__ import annotations

import torch
from torch.utils.data import Subset

from deepcourse.data import sample_lengths
from deepcourse.training.sampling import EpochSampler, LengthGroupedSampler


def zipf_lengths(n: int = 1000, seed: int = 0) -> torch.Tensor:
    """Sentence-like lengths: mostly short, a long tail (as in CoNLL-2003)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.empty(n).exponential_(1 / 14, generator=g) + 1).long().clamp(max=120)


def batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def padded_tokens(order: list[int], lengths: torch.Tensor, size: int) -> int:
    return sum(len(b) * int(lengths[b].max()) for b in batches(order, size))


def test_every_sample_once_per_epoch_and_the_short_batch_last() -> None:
    lengths = zipf_lengths(1003)
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=1, group_batches=4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(1003))
        assert [len(b) for b in batches(order, 32)][:-1] == [32] * 31 and len(batches(order, 32)[-1]) == 11


def test_grouped_batches_need_far_less_padding_than_random_ones() -> None:
    lengths = zipf_lengths()
    grouped = list(LengthGroupedSampler(lengths, batch_size=32, seed=0))
    shuffled = list(EpochSampler(len(lengths), seed=0))
    real = int(lengths.sum())
    assert padded_tokens(grouped, lengths, 32) < 1.25 * real < padded_tokens(shuffled, lengths, 32) / 2


def test_the_order_depends_only_on_seed_and_epoch() -> None:
    lengths = zipf_lengths()
    a, b = LengthGroupedSampler(lengths, 32, seed=5), LengthGroupedSampler(lengths, 32, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)  # a resumed run and every process see the same batches
    b.set_epoch(3)
    assert list(a) != list(b)


def test_batch_order_is_shuffled_not_sorted() -> None:
    lengths = zipf_lengths()
    sampler = LengthGroupedSampler(lengths, 32, seed=0)
    maxima = [int(lengths[b].max()) for b in batches(list(sampler), 32)][:-1]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    firsts = set()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        firsts.add(tuple(batches(list(sampler), 32)[0]))
    assert len(firsts) == 5


def test_sample_lengths_follow_a_subset() -> None:
    class Sentences(torch.utils.data.Dataset):
        lengths = torch.tensor([3, 1, 4, 1, 5])

        def __len__(self) -> int:
            return 5

    assert sample_lengths(Subset(Sentences(), [4, 0])).tolist() == [5, 3]
    assert sample_lengths(Subset(list(range(5)), [1])) is None
