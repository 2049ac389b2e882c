"""Recurrent taggers: word (+ character) features -> RNN/LSTM/GRU encoder -> one head per label column.

The five registered models are one network with different defaults, the way timm registers variants of one
architecture: `rnn_tagger`, `lstm_tagger` and `gru_tagger` (left-to-right, softmax), `bilstm_tagger` (both
directions, softmax) and `bilstm_crf` (both directions, CRF, character CNN: Ma & Hovy 2016; set
`char_features = "lstm"` for Lample et al. 2016). Their keys are the keyword arguments of `build_tagger`.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, cast

import torch
from pydantic import Field
from torch import nn

from deepcourse.api import MODELS, RecipeError

from ..batching import CASINGS
from .chars import CharCNN, CharLSTM, run_recurrent
from .heads import HEADS, Head

Cell = Literal["rnn", "lstm", "gru"]
Decoder = Literal["softmax", "crf"]
CharFeatures = Literal["none", "cnn", "lstm"]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(ge=0, lt=1)]
_CELLS: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def reverse_index(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, T] positions that reverse each row within its length and leave the padding in place (an involution)."""
    pos = torch.arange(width, device=lengths.device)
    last = lengths.unsqueeze(1) - 1
    return torch.where(pos < lengths.unsqueeze(1), last - pos, pos)


class SequenceDropout(nn.Dropout):
    """Dropout over [B, T, H] sequences. `locked=True` is variational (locked) dropout (Gal & Ghahramani 2016;
    Merity et al. 2018): one mask per sentence and feature, the same at every position, so a recurrent layer sees
    a feature either present or absent for the whole sentence instead of flickering from word to word. `locked=False`
    is `nn.Dropout` (a mask per position). Neither has weights: a model saved with one loads with the other."""

    def __init__(self, p: float, locked: bool = False) -> None:
        super().__init__(p)
        self.locked = locked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.locked and self.training and self.p > 0) or x.dim() != 3:
            return super().forward(x)
        keep = 1.0 - self.p
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(keep).div_(keep)
        return x * mask


class RecurrentEncoder(nn.Module):
    """Stacked RNN/LSTM/GRU over padded batches, one or both directions.

    No packing: the left-to-right pass may run over the padding (it comes after every real token), and the
    right-to-left pass reads each sentence reversed within its own length (one gather), so padding never reaches
    a real position's state. On CPU this runs the fused kernels of padded input, 2-3x faster than a
    PackedSequence, and on GPU it needs no lengths on the host. `reverse_index` equals packing's result
    (plugins/sequence/tests/test_models.py checks it against a packed torch.nn.LSTM).
    """

    def __init__(self, cell: Cell, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
                 dropout: float, locked_dropout: bool = False) -> None:
        super().__init__()
        rnn = _CELLS[cell]
        self.dropout = SequenceDropout(dropout, locked_dropout)  # between stacked layers
        sizes = [input_size] + [hidden_size * (2 if bidirectional else 1)] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(rnn(n, hidden_size, batch_first=True) for n in sizes)
        self.backward_layers = nn.ModuleList(rnn(n, hidden_size, batch_first=True) for n in sizes) \
            if bidirectional else None
        self.out_features = hidden_size * (2 if bidirectional else 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        index = None
        if self.backward_layers is not None:
            index = reverse_index(lengths, x.shape[1]).unsqueeze(2)
        for i, forward in enumerate(self.forward_layers):
            if i:
                x = self.dropout(x)
            states = run_recurrent(forward, x)[0]
            if index is not None and self.backward_layers is not None:  # both, or neither (one direction)
                backward = self.backward_layers[i]
                reversed_states = run_recurrent(backward, x.gather(1, index.expand(-1, -1, x.shape[2])))[0]
                states = torch.cat([states, reversed_states.gather(1, index.expand(-1, -1, states.shape[2]))], 2)
            x = states
        return x


class SequenceTagger(nn.Module):
    """Shared encoder and named heads. `forward(batch)` returns per-sentence losses `loss_<head>` for every head
    whose tags (`tags_<head>`) are in the batch and, with `decode=True`, tag ids `pred_<head>` [B, T]."""

    is_singleton: torch.Tensor  # a buffer (nn.Module types its attributes as tensor-or-module)

    def __init__(self, *, word_embedding: nn.Embedding, char_encoder: CharCNN | CharLSTM | None, cell: Cell,
                 hidden_size: int, num_layers: int, bidirectional: bool, dropout: float, word_dropout: float,
                 unk_idx: int, heads: Mapping[str, tuple[Decoder, int]], casing_dim: int = 0,
                 singleton_dropout: float = 0.0, singletons: torch.Tensor | None = None,
                 locked_dropout: bool = False) -> None:
        super().__init__()
        self.word_embedding = word_embedding
        self.char_encoder = char_encoder
        self.casing_embedding = nn.Embedding(len(CASINGS), casing_dim, padding_idx=0) if casing_dim else None
        in_features = word_embedding.embedding_dim + (char_encoder.out_features if char_encoder else 0) + casing_dim
        self.dropout = SequenceDropout(dropout, locked_dropout)  # on the encoder's input and output
        self.encoder = RecurrentEncoder(cell, in_features, hidden_size, num_layers, bidirectional, dropout,
                                        locked_dropout)
        self.heads = nn.ModuleDict({name: HEADS[kind](self.encoder.out_features, n)
                                    for name, (kind, n) in heads.items()})
        self.word_dropout, self.unk_idx = word_dropout, unk_idx
        self.singleton_dropout = singleton_dropout
        is_singleton = torch.zeros(word_embedding.num_embeddings, dtype=torch.bool)
        if singletons is not None and len(singletons):
            is_singleton[singletons.long()] = True
        self.register_buffer("is_singleton", is_singleton, persistent=False)  # a fact of the data, not a weight

    def head(self, name: str) -> Head:
        """The output layer of label `name`, as its type (a ModuleDict only knows that it holds modules)."""
        return cast(Head, self.heads[name])

    def encode(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Contextual states [B, T, H] of every position (zeros past each sentence's end)."""
        words, lengths = batch["words"], batch["lengths"]
        if self.training and self.word_dropout > 0:
            drop = (torch.rand(words.shape, device=words.device) < self.word_dropout) & (words != 0)
            words = words.masked_fill(drop, self.unk_idx)
        if self.training and self.singleton_dropout > 0:  # Lample et al. 2016: <unk> learns from seen words
            drop = (torch.rand(words.shape, device=words.device) < self.singleton_dropout) & self.is_singleton[words]
            words = words.masked_fill(drop, self.unk_idx)
        x = self.word_embedding(words)
        if self.casing_embedding is not None:
            x = torch.cat([x, self.casing_embedding(batch["casing"])], dim=-1)
        if self.char_encoder is not None:
            forms = self.char_encoder(batch["chars"], batch["char_lengths"], batch.get("char_lengths_host"))
            forms = torch.cat([forms, forms.new_zeros(1, forms.shape[1])])  # the padding row char_index uses
            x = torch.cat([x, forms[batch["char_index"]]], dim=-1)
        return self.dropout(self.encoder(self.dropout(x), lengths))

    def forward(self, batch: Mapping[str, torch.Tensor], decode: bool = False,
                scores: bool = False) -> dict[str, torch.Tensor]:
        """`scores=True` also returns each head's per-token tag scores `scores_<head>` [B, T, K] (for `explain`:
        marginals, n-best paths and saliency start from them, under the run's precision)."""
        states = self.encode(batch)
        mask = torch.arange(states.shape[1], device=states.device) < batch["lengths"].unsqueeze(1)
        out: dict[str, torch.Tensor] = {}
        for name in self.heads:
            head = self.head(name)
            out.update(head_outputs(name, head, head.scores(states), batch, mask, decode=decode, scores=scores))
        return out


def head_outputs(name: str, head: Head, tag_scores: torch.Tensor, batch: Mapping[str, torch.Tensor],
                 mask: torch.Tensor, *, decode: bool, scores: bool) -> dict[str, torch.Tensor]:
    """Label `name`'s entries of a tagger's outputs from its tag scores: the loss (when the batch has its tags), the
    decoded tags (`decode`) and the scores themselves (`scores`). One tagger's, or an ensemble's combined head's."""
    out: dict[str, torch.Tensor] = {}
    tags = batch.get(f"tags_{name}")
    if tags is not None:
        out[f"loss_{name}"] = head.loss(tag_scores, tags, mask)
    if decode:
        out[f"pred_{name}"] = head.decode(tag_scores, mask)
    if scores:
        out[f"scores_{name}"] = tag_scores
    return out


def build_tagger(
    vocab_size: int,
    num_tags: int | dict[str, int],
    *,
    cell: Cell = "lstm",
    bidirectional: bool = True,
    decoder: Decoder = "crf",
    head_decoders: dict[str, Decoder] | None = None,
    embeddings: torch.Tensor | None = None,
    word_dim: PositiveInt | None = None,
    freeze_embeddings: bool = False,
    char_vocab_size: int | None = None,
    char_features: CharFeatures = "none",
    char_dim: PositiveInt = 30,
    char_hidden: PositiveInt = 50,
    char_kernel: PositiveInt = 3,
    hidden_size: PositiveInt = 200,
    num_layers: PositiveInt = 1,
    dropout: Rate = 0.5,
    locked_dropout: bool = False,
    word_dropout: Rate = 0.0,
    singleton_dropout: Rate = 0.0,
    casing_dim: NonNegInt = 0,
    padding_idx: int | None = None,
    unk_idx: int | None = None,
    singletons: torch.Tensor | None = None,
) -> SequenceTagger:
    """A tagger for sequences of word ids (the task provides vocab_size, num_tags, embeddings and the rest).

    hidden_size is per direction, as in torch.nn.LSTM. decoder is the head of every label column; head_decoders
    overrides it per column (e.g. {pos = "softmax"} beside CRFs for chunks and entities). char_hidden is the
    number of CNN filters, or the hidden size per direction of the character BiLSTM. word_dropout replaces words
    by <unk> with this probability during training, so the model learns to tag from context and characters;
    singleton_dropout does so for the words seen once in train only (Lample et al. 2016 use 0.5), so <unk>, which
    every unseen word becomes, is trained on rare words like the ones it will stand for. casing_dim > 0 adds an
    embedding of each token's shape (lower, UPPER, Initial, numeric, ...: Reimers & Gurevych 2017), which
    lower-cased word vectors lose. locked_dropout makes the dropout on the encoder's input, between its layers and
    on its output variational (Gal & Ghahramani 2016): one mask per sentence, the same at every word.
    The facts default to None (char_vocab_size 0, padding_idx 0, unk_idx 1) so that a saved recipe, which lists
    every default, never overrides what the data provides.
    """
    padding_idx = 0 if padding_idx is None else padding_idx
    unk_idx = 1 if unk_idx is None else unk_idx
    heads = num_tags if isinstance(num_tags, dict) else {"tags": num_tags}
    unknown = sorted(set(head_decoders or {}) - set(heads))
    if unknown:
        raise RecipeError(f"model.head_decoders: no label column named {', '.join(map(repr, unknown))}; the task "
                          f"predicts {', '.join(heads)}")
    if embeddings is not None:
        if word_dim is not None and word_dim != embeddings.shape[1]:
            raise RecipeError(f"model.word_dim: {word_dim}, but the pretrained vectors (data.embeddings) have "
                              f"{embeddings.shape[1]} dimensions; remove word_dim or make them agree")
        # a copy: from_pretrained wraps the tensor it is given, and the task hands every model it builds the same
        # one (an ensemble's members would share one embedding, and training would change the task's vectors)
        word_embedding = nn.Embedding.from_pretrained(embeddings.detach().float().clone(),
                                                      freeze=freeze_embeddings, padding_idx=padding_idx)
    else:
        word_embedding = nn.Embedding(vocab_size, word_dim or 100, padding_idx=padding_idx)
    char_encoder: CharCNN | CharLSTM | None = None
    if char_features != "none":
        if not char_vocab_size:
            raise RecipeError(f"model.char_features: '{char_features}' needs character ids, which this task "
                              f"does not provide")
        char_encoder = (CharCNN(char_vocab_size, char_dim, char_hidden, char_kernel, dropout, padding_idx)
                        if char_features == "cnn" else CharLSTM(char_vocab_size, char_dim, char_hidden, 0.0,
                                                                padding_idx))
    decoders = {name: (head_decoders or {}).get(name, decoder) for name in heads}
    return SequenceTagger(word_embedding=word_embedding, char_encoder=char_encoder, cell=cell,
                          hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                          dropout=dropout, word_dropout=word_dropout, unk_idx=unk_idx,
                          heads={name: (decoders[name], n) for name, n in heads.items()}, casing_dim=casing_dim,
                          singleton_dropout=singleton_dropout, singletons=singletons,
                          locked_dropout=locked_dropout)


def register_variant(name: str, doc: str, *, fixed: Mapping[str, Any],
                     defaults: Mapping[str, Any] | None = None) -> None:
    """Register `build_tagger` as model `name` with some arguments fixed (no longer recipe keys) and other
    defaults; the variant's signature, and so its recipe schema and `deepcourse list -v`, shows exactly that."""
    sig = inspect.signature(build_tagger)
    defaults = defaults or {}
    params = [p.replace(default=defaults[p.name]) if p.name in defaults else p
              for p in sig.parameters.values() if p.name not in fixed]

    def builder(**kwargs: Any) -> SequenceTagger:
        return build_tagger(**{**defaults, **kwargs, **fixed})

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    # inspect.signature reads __signature__, which function objects do not declare
    builder.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    builder.__annotations__ = {k: v for k, v in build_tagger.__annotations__.items() if k not in fixed}
    MODELS.register(name, builder)


register_variant("rnn_tagger", "Elman RNN tagger (tanh), left to right, softmax per token: the course's baseline.",
                 fixed={"cell": "rnn"}, defaults={"bidirectional": False, "decoder": "softmax"})
register_variant("lstm_tagger", "LSTM tagger, left to right, softmax per token.",
                 fixed={"cell": "lstm"}, defaults={"bidirectional": False, "decoder": "softmax"})
register_variant("gru_tagger", "GRU tagger, left to right, softmax per token.",
                 fixed={"cell": "gru"}, defaults={"bidirectional": False, "decoder": "softmax"})
register_variant("bilstm_tagger", "Bidirectional LSTM tagger, softmax per token (BiLSTM-CRF without the CRF).",
                 fixed={"cell": "lstm", "bidirectional": True}, defaults={"decoder": "softmax"})
register_variant("bilstm_crf", "BiLSTM-CRF tagger with character CNN features (Ma & Hovy 2016; Lample et al. 2016 "
                 "with char_features = 'lstm').",
                 fixed={"cell": "lstm", "bidirectional": True}, defaults={"decoder": "crf", "char_features": "cnn"})
