"""Moving tensors to the arrays a piece computes with (numpy, or torch without autograd) and back."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deepcourse.lab.pieces import PieceError

__all__ = ["to_array", "from_array"]


def to_array(t: torch.Tensor, kind: str, *, copy: bool = False) -> Any:
    """A detached view of `t` for a piece: a numpy array (half precisions widened to float32, which numpy lacks) or a
    torch tensor outside autograd. `copy` when the piece may write into it."""
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    if kind == "torch":
        return t.clone() if copy else t
    a = t.cpu().numpy()
    return a.copy() if copy else a


def from_array(a: Any, *, like: torch.Tensor, what: str) -> torch.Tensor:
    """`a` (numpy, torch or a number) as a tensor on `like`'s device and dtype."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        try:
            t = torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float64 if like.dtype == torch.float64
                                                                 else None)))
        except (TypeError, ValueError) as exc:
            raise PieceError(f"{what}: {type(a).__name__} is not an array ({exc})") from None
    return t.to(device=like.device, dtype=like.dtype)
