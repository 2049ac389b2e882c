"""Models: the unpacked bidirectional encoder equals a packed torch.nn.LSTM, every registered tagger trains."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from deepcourse.api import MODELS, RecipeError, call_builder, parameters
from deepcourse_sequence.batching import TaggedSentences
from deepcourse_sequence.models.recurrent import RecurrentEncoder, SequenceDropout, reverse_index
from deepcourse_sequence.vocab import VocabOptions, Vocabulary

TAGGERS = ["rnn_tagger", "lstm_tagger", "gru_tagger", "bilstm_tagger", "bilstm_crf"]


def test_reverse_index_is_an_involution() -> None:
    index = reverse_index(torch.tensor([3, 1, 4]), 4)
    assert index.tolist() == [[2, 1, 0, 3], [0, 1, 2, 3], [3, 2, 1, 0]]
    assert torch.equal(index.gather(1, index), torch.arange(4).expand(3, 4))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_bidirectional_encoder_equals_packed_rnn(cell: str, layers: int) -> None:
    torch.manual_seed(0)
    encoder = RecurrentEncoder(cell, 5, 4, layers, bidirectional=True, dropout=0.0)
    reference = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](5, 4, num_layers=layers, batch_first=True,
                                                                     bidirectional=True)
    with torch.no_grad():
        for layer in range(layers):
            for direction, suffix in ((encoder.forward_layers, ""), (encoder.backward_layers, "_reverse")):
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(reference, f"{kind}_l{layer}{suffix}").copy_(getattr(direction[layer], f"{kind}_l0"))
    lengths = torch.tensor([6, 2, 4, 1])
    x = torch.randn(4, 6, 5)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = pad_packed_sequence(reference(packed)[0], batch_first=True)
    got = encoder(x, lengths)
    mask = (torch.arange(6) < lengths.unsqueeze(1)).unsqueeze(2)
    torch.testing.assert_close(got * mask, expected * mask)


def tiny_batch() -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    sentences = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    words = Vocabulary(["EU", "rejects", "German", "Peter"])
    chars = Vocabulary(sorted({c for s in sentences for w in s for c in w}))
    tags = {"ner": [[1, 0, 2, 0], [3, 4], [1]], "pos": [[0, 1, 2, 3], [0, 0], [0]]}
    data = TaggedSentences(sentences, words=words, word_options=VocabOptions(), chars=chars, tags=tags)
    facts = {"vocab_size": len(words), "char_vocab_size": len(chars), "num_tags": {"ner": 5, "pos": 4},
             "embeddings": None, "padding_idx": 0, "unk_idx": 1}
    return data.__getitems__([0, 1, 2]), facts


def test_batches_cut_padding_and_share_word_forms() -> None:
    data = TaggedSentences([["a", "bb", "a"], ["bb"]], words=Vocabulary(["a"]), word_options=VocabOptions(),
                           chars=Vocabulary(["a", "b"]), tags={"ner": [[0, 1, 0], [1]]})
    batch = data.__getitems__([1])
    assert batch["words"].tolist() == [[1]] and batch["tags_ner"].tolist() == [[1]]
    assert batch["chars"].tolist() == [[3, 3]] and batch["char_index"].tolist() == [[0]]
    batch = data.__getitems__([0, 1])
    assert batch["chars"].shape[0] == 2  # two distinct forms for four tokens
    assert batch["char_index"].tolist() == [[0, 1, 0], [1, 2, 2]]  # padding points past the forms
    assert batch["tags_ner"].tolist() == [[0, 1, 0], [1, -100, -100]]


def fit_batch(model: nn.Module, batch: dict[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
    """Train `model` on one batch (NER and POS heads) with Adam, then decode it in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        out = model(batch)
        (out["loss_ner"] + out["loss_pos"]).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        return model(batch, decode=True)


@pytest.mark.parametrize("name", TAGGERS)
@pytest.mark.parametrize("chars", ["none", "cnn", "lstm"])
def test_every_tagger_learns_a_batch(name: str, chars: str) -> None:
    torch.manual_seed(0)
    batch, facts = tiny_batch()
    model = call_builder(MODELS.get(name), {"char_features": chars, "hidden_size": 16, "dropout": 0.0,
                                            "head_decoders": {"pos": "softmax"}}, loc="model", provided=facts)
    out = fit_batch(model, batch, steps=40)
    assert torch.equal(out["pred_ner"], batch["tags_ner"]) and torch.equal(out["pred_pos"], batch["tags_pos"])


def test_locked_dropout_keeps_one_mask_per_sentence() -> None:
    torch.manual_seed(0)
    x = torch.ones(4, 7, 50)
    locked, plain = SequenceDropout(0.5, locked=True), SequenceDropout(0.5)
    y = locked(x)
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at every position of a sentence
    assert set(y.unique().tolist()) == {0.0, 2.0}  # dropped or scaled by 1 / (1 - p): the expectation is kept
    assert not torch.equal(y[0], y[1])  # each sentence draws its own
    z = plain(x)
    assert not torch.equal(z, z[:, :1].expand_as(z))  # nn.Dropout's mask changes from word to word
    locked.eval()
    assert torch.equal(locked(x), x)


def test_a_tagger_with_locked_dropout_trains_and_loads_into_one_without() -> None:
    torch.manual_seed(0)
    batch, facts = tiny_batch()
    options = {"hidden_size": 16, "dropout": 0.3, "num_layers": 2, "head_decoders": {"pos": "softmax"}}
    model = call_builder(MODELS.get("bilstm_crf"), {**options, "locked_dropout": True}, loc="model", provided=facts)
    assert all(m.locked for m in model.modules() if isinstance(m, SequenceDropout))
    out = fit_batch(model, batch, steps=60)
    assert torch.equal(out["pred_ner"], batch["tags_ner"])
    plain = call_builder(MODELS.get("bilstm_crf"), options, loc="model", provided=facts).eval()
    plain.load_state_dict(model.state_dict())  # dropout has no weights: the same checkpoint either way
    assert torch.equal(plain(batch, decode=True)["pred_ner"], out["pred_ner"])


def test_pretrained_vectors_are_copied_into_each_model() -> None:
    _, facts = tiny_batch()
    vectors = torch.randn(facts["vocab_size"], 8)
    kept = vectors.clone()
    first, second = (call_builder(MODELS.get("bilstm_crf"), {}, loc="model", provided={**facts, "embeddings": vectors})
                     for _ in range(2))
    assert torch.equal(first.word_embedding.weight, vectors)
    with torch.no_grad():
        first.word_embedding.weight.add_(1.0)  # as training (or loading an ensemble member's weights) does
    assert torch.equal(vectors, kept) and torch.equal(second.word_embedding.weight, kept)


def test_variants_fix_their_architecture() -> None:
    assert "cell" not in parameters(MODELS.get("bilstm_crf"))
    assert "bidirectional" not in parameters(MODELS.get("bilstm_tagger"))
    assert "bidirectional" in parameters(MODELS.get("lstm_tagger"))
    _, facts = tiny_batch()
    lstm = call_builder(MODELS.get("lstm_tagger"), {}, loc="model", provided=facts)
    assert lstm.encoder.backward_layers is None and type(lstm.heads["ner"]).__name__ == "SoftmaxHead"
    assert MODELS.entry("bilstm_crf").origin == "sequence"
    model = call_builder(MODELS.get("bilstm_crf"), {}, loc="model", provided=facts)
    assert type(model.heads["ner"]).__name__ == "CRFHead" and model.char_encoder is not None
    problems = {
        "model.cell: unknown key": {"cell": "gru"},
        "model.head_decoders: no label column named 'chunk'": {"head_decoders": {"chunk": "crf"}},
    }
    for message, options in problems.items():
        with pytest.raises(RecipeError) as error:
            call_builder(MODELS.get("bilstm_crf"), options, loc="model", provided=facts)
        assert message in error.value.render()
    with pytest.raises(RecipeError, match="model.word_dim: 30, but the pretrained vectors"):
        call_builder(MODELS.get("bilstm_crf"), {"word_dim": 30}, loc="model",
                     provided={**facts, "embeddings": torch.zeros(facts["vocab_size"], 8)})


def test_the_monitor_follows_the_data_without_changing_the_task_class(mini) -> None:
    """`monitor` is a property of the fitted task (F1 for span columns, accuracy for token columns, prefixed with
    the column when there are several), never a class attribute overwritten by set-up."""
    from deepcourse.api import build_task, load_recipe, shipped_recipes
    from deepcourse_sequence.task import SequenceTagging

    recipe = load_recipe(shipped_recipes()["conll_custom"], [f"data.data_dir='{mini}'"])
    task = build_task(recipe)
    task.setup_data(recipe.data, splits=("train", "validation"), seed=0)
    assert task.monitor == "f1" and task.headline_metrics(task.monitor) == ["f1"]
    multi = load_recipe(shipped_recipes()["conll_custom"], [f"data.data_dir='{mini}'", "task.labels=['ner', 'pos']",
                                                            "model.head_decoders={pos='softmax'}"])
    both = build_task(multi)
    both.setup_data(multi.data, splits=("train",), seed=0)
    assert both.monitor == "ner_f1" and both.headline_metrics(both.monitor) == ["ner_f1", "pos_accuracy"]
    assert isinstance(SequenceTagging.__dict__["monitor"], property) and task.monitor == "f1"


def test_setup_example_keeps_the_recipes_label_columns() -> None:
    from deepcourse.api import TASKS

    task = TASKS.build("sequence-tagging", labels=("ner",))
    batch = task.setup_example({"num_tags": {"ner": 9, "pos": 40}}, batch_size=2)
    assert task.labels == ["ner"] and task.num_trained == {"ner": 9}
    assert batch["words"].shape[0] == 2 and set(k for k in batch if k.startswith("tags_")) == {"tags_ner"}
    with pytest.raises(ValueError, match="no num_tags for the label column"):
        TASKS.build("sequence-tagging", labels=("ner", "chunk")).setup_example({"num_tags": {"ner": 9}})


def test_a_subset_of_sentences_batches_as_they_did() -> None:
    words = Vocabulary(["Alice", "met", "Bob", "in", "Paris"])
    data = TaggedSentences([["Alice", "met", "Bob"], ["in", "Paris"], ["Bob"]], words=words,
                           word_options=VocabOptions(), chars=Vocabulary(list("AlicemtBobnPars")),
                           tags={"ner": [[1, 0, 1], [0, 2], [1]]})
    part = data.subset(torch.tensor([2, 0]))
    assert part.tokens == [["Bob"], ["Alice", "met", "Bob"]] and len(part) == 2
    whole, cut = data.__getitems__([2, 0]), part.__getitems__([0, 1])
    assert whole.keys() == cut.keys()
    assert all(torch.equal(whole[k], cut[k]) if isinstance(whole[k], torch.Tensor) else whole[k] == cut[k]
               for k in whole)


def test_the_character_bilstm_packs_with_the_batchs_host_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch carries its characters' lengths as a host list too (a list stays on the host when Accelerate moves the
    batch to the GPU), so the character BiLSTM packs without copying lengths back from the device each step."""
    from accelerate.utils import send_to_device

    batch, facts = tiny_batch()
    assert batch["char_lengths_host"] == batch["char_lengths"].tolist()
    assert send_to_device(batch, "cpu")["char_lengths_host"] == batch["char_lengths_host"]  # not made a tensor
    model = call_builder(MODELS.get("bilstm_crf"), {"char_features": "lstm"}, loc="model", provided=facts)
    copies: list[torch.Size] = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(self.shape) or real_cpu(self, *a, **k))
    out = model(batch)
    (out["loss_ner"]).mean().backward()
    assert copies == []
    without = {k: v for k, v in batch.items() if k != "char_lengths_host"}  # a batch made elsewhere still works
    model(without)
    assert copies == [batch["char_lengths"].shape]
