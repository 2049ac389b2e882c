"""The order of training batches: a shuffle that depends only on (seed, epoch), batches of similar lengths, and
batches cut on the device (`data.on_device`). Depending only on the seed and the epoch keeps a resumed run exact and
every process agreeing on the order without saving generator state."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler", "LengthGroupedSampler", "DeviceBatchSampler"]


class EpochSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on (seed, epoch).

    That makes the order of any epoch reproducible without saving generator state, identical in every process
    under `accelerate launch`, and lets a resumed run skip exactly the batches it had already seen.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        return iter(torch.randperm(self.length, generator=self.generator()).tolist())

    def generator(self) -> torch.Generator:
        """This epoch's random source, a function of (seed, epoch) only."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __len__(self) -> int:
        return self.length


class LengthGroupedSampler(EpochSampler):
    """An `EpochSampler` whose batches hold samples of similar length, so little of each batch is padding.

    Each epoch: a (seed, epoch) permutation, cut into groups of `group_batches` batches; each group is sorted by
    length and cut into batches; the full batches are shuffled, and the one short batch (if any) goes last, where
    the DataLoader expects it. Batches stay random in content and order, only their lengths are alike (the scheme
    of AllenNLP's bucket sampler and HF's LengthGroupedSampler). Depending only on (seed, epoch), it keeps resume
    exact and every process agreeing on the order.
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int, group_batches: int = 50) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.group_batches = batch_size, group_batches

    def __iter__(self) -> Iterator[int]:
        g = self.generator()
        perm = torch.randperm(self.length, generator=g)
        group = self.batch_size * self.group_batches
        ordered = torch.cat([chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
                             for chunk in perm.split(group)]) if self.length else perm
        batches = list(ordered.split(self.batch_size))
        short = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        order = torch.randperm(len(batches), generator=g).tolist()
        out = [batches[i] for i in order] + ([short] if short is not None else [])
        return iter(torch.cat(out).tolist() if out else [])


class DeviceBatchSampler(Sampler[torch.Tensor]):
    """Batches of indices as tensors on the data's device (`data.on_device`), for one training process.

    The epoch's order is the `sampler`'s (a function of seed and epoch, the same on every device, so a run on a GPU
    sees the batches a run on a CPU does); it is copied to the device once per epoch, and each batch is a slice of
    it there. A step then moves nothing from the host: no list of indices is made into a tensor and copied per batch,
    which made the GPU wait for the host at every step."""

    def __init__(self, sampler: EpochSampler, batch_size: int, device: torch.device, drop_last: bool = False) -> None:
        self.sampler, self.batch_size, self.device, self.drop_last = sampler, batch_size, device, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)  # once per epoch, on the host
        order = order.to(self.device, non_blocking=True)
        if self.drop_last:
            order = order[:len(self) * self.batch_size]
        return iter(order.split(self.batch_size))

    def __len__(self) -> int:
        whole, rest = divmod(len(self.sampler), self.batch_size)
        return whole + (1 if rest and not self.drop_last else 0)
