"""Correct past one process (issue 22): what a cluster does to a run, reproduced on one CPU machine."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from deepcourse.rundir import files


class FakeCuda:
    """torch.cuda as a node with `count` GPUs shows it to a process on GPU `device`: one generator state per GPU."""

    def __init__(self, count: int, device: int) -> None:
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(count)}
        self.device = device

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "current_device", lambda: self.device)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device=None: self.states[self._index(device)].clone())
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states.values()])
        monkeypatch.setattr(cuda, "set_rng_state", self._set)
        monkeypatch.setattr(cuda, "set_rng_state_all", lambda states: [self._set(s, i) for i, s in enumerate(states)])

    def _index(self, device: Any) -> int:
        index = self.device if device is None else int(getattr(device, "index", device))
        if index not in self.states:
            raise IndexError(f"no GPU {index} on this node")
        return index

    def _set(self, state: torch.Tensor, device: Any = None) -> None:
        self.states[self._index(device)] = state.clone()


def test_a_process_saves_and_restores_only_its_own_gpus_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved on GPU 10 of a 12-GPU node, resumed as GPU 1 of a 2-GPU node: no IndexError, and the state that
    comes back is the process's own (not GPU 0's, not a list sorted as strings)."""
    big = FakeCuda(12, device=10)
    big.install(monkeypatch)
    tensors, meta = files.rng_state()
    assert [k for k in tensors if k.startswith("cuda")] == ["cuda"]
    assert torch.equal(tensors["cuda"], big.states[10])

    small = FakeCuda(2, device=1)
    small.install(monkeypatch)
    files.set_rng_state(tensors, meta)
    assert torch.equal(small.states[1], big.states[10])
    assert torch.equal(small.states[0], torch.zeros(16, dtype=torch.uint8))  # GPU 0 left alone


def test_an_older_checkpoint_with_every_gpu_restores_this_process_s(monkeypatch: pytest.MonkeyPatch) -> None:
    old = FakeCuda(12, device=0)
    tensors = {"torch": torch.get_rng_state(), "numpy": files.rng_state()[0]["numpy"]}
    tensors |= {f"cuda{i}": s for i, s in old.states.items()}  # what checkpoints held before: every visible GPU
    meta = files.rng_state()[1]
    node = FakeCuda(2, device=1)
    node.install(monkeypatch)
    files.set_rng_state(tensors, meta)
    assert torch.equal(node.states[1], old.states[1])
