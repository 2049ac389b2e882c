"""Character-level word features: a word's spelling as a vector, so unseen words and capitalisation still count.

Both encoders take the batch's distinct word forms as character ids [U, L] with their lengths [U] and return
[U, out_features]; the tagger scatters them back to token positions.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence


class CharCNN(nn.Module):
    """Ma & Hovy (2016): character embeddings, one convolution, max over the word's characters."""

    def __init__(self, vocab_size: int, dim: int = 30, filters: int = 50, kernel: int = 3, dropout: float = 0.0,
                 padding_idx: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv1d(dim, filters, kernel, padding=kernel // 2)
        self.out_features = filters

    def forward(self, chars: torch.Tensor, lengths: torch.Tensor, host_lengths: Any = None) -> torch.Tensor:
        x = self.dropout(self.embedding(chars)).transpose(1, 2)  # [U, dim, L]
        h = self.conv(x)[:, :, :chars.shape[1]]
        outside = torch.arange(chars.shape[1], device=chars.device) >= lengths.unsqueeze(1)
        return h.masked_fill(outside.unsqueeze(1), float("-inf")).amax(dim=2)  # padding never wins the max


def run_recurrent(rnn: nn.Module, x: Any) -> Any:
    """`rnn(x)`, in float32 when CPU autocast is on (`train.mixed_precision = "bf16"` on a CPU).

    oneDNN has no bfloat16 LSTM on CPUs without native bf16 ("could not create a primitive descriptor"), so under
    CPU autocast the recurrent layers run in float32 and everything around them in bf16. GPUs keep autocast."""
    data = x.data if isinstance(x, PackedSequence) else x
    if data.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return rnn(x.float())
    return rnn(x)


class CharLSTM(nn.Module):
    """Lample et al. (2016): a character BiLSTM; the word is the last state of each direction, concatenated."""

    def __init__(self, vocab_size: int, dim: int = 25, hidden: int = 25, dropout: float = 0.0,
                 padding_idx: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.out_features = 2 * hidden

    def forward(self, chars: torch.Tensor, lengths: torch.Tensor, host_lengths: Any = None) -> torch.Tensor:
        # packing needs the lengths on the host: the batch's own host copy when it has one (no device sync)
        on_host = host_lengths if host_lengths is not None else lengths.cpu()
        packed = pack_padded_sequence(self.dropout(self.embedding(chars)), on_host, batch_first=True,
                                      enforce_sorted=False)
        _, (h, _) = run_recurrent(self.lstm, packed)  # h: [2, U, hidden], already in the input order
        return torch.cat([h[0], h[1]], dim=1)
