"""The `sequence-tagging` task: one or more label columns of CoNLL data, one head per column on a shared encoder.

Span columns (tags such as B-PER, I-PER, O: named entities, chunks) are converted to the training scheme (BIOES by
default) and scored on spans in the scoring scheme (BIO); other columns (part-of-speech tags) are scored by token
accuracy. With several columns the loss is a weighted sum of the heads' losses and every metric is prefixed with
its column (`ner_f1`, `pos_accuracy`); the first column (or `primary`) is the one watched for model selection.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from deepcourse.api import (
    DATASETS,
    TASKS,
    Accuracy,
    DataBundle,
    DataError,
    DataSection,
    ExplainOptions,
    Explanation,
    ExportGraph,
    Figure,
    MeanLoss,
    Metric,
    MetricCollection,
    PairedItem,
    Recipe,
    RecipeError,
    Task,
    UserError,
    call_builder,
    resolve_splits,
    splits_to_read,
)

from .batching import TaggedSentences
from .conll import format_sentence, iter_sentences
from .datasets import Corpus, LoadedSplit
from .metrics import SpanF1
from .schemes import Scheme, convert, first_violation, is_span_tag, spans
from .vocab import VocabOptions, Vocabulary, char_counts, embedding_matrix, read_vectors

ARTIFACTS_FORMAT = 1
#: under deepcourse's logger, so what shows or silences the core's lines does the same with the plugin's
log = logging.getLogger(f"deepcourse.{__name__}")
#: a made-up sentence of typical length (CoNLL-2003's training sentences average 14.5 tokens), for the model zoo
EXAMPLE_SENTENCE = "Alice Smith of Acme Corp flew from Paris to Berlin on Monday morning ."


@TASKS.register("sequence-tagging", aliases=("tagging",))
class SequenceTagging(Task):
    """Tag every token of CoNLL sentences (NER, chunking, POS), one column or several jointly."""

    monitor_mode = "max"
    supports_nbest = True  # predict --nbest K: the K best tag paths of every label column

    def __init__(
        self,
        labels: tuple[str, ...] = ("ner",),
        token_column: str = "token",
        tag_scheme: Scheme = "BIOES",
        score_scheme: Scheme = "BIO",
        token_labels: tuple[str, ...] = (),
        loss_weights: dict[str, Annotated[float, Field(ge=0)]] | None = None,
        loss_reduction: Literal["mean", "sum", "token_mean"] = "mean",
        primary: str | None = None,
    ) -> None:
        """labels: the columns to predict, one head each. tag_scheme: span tags are trained in it (BIOES tells
        the model where a span ends); score_scheme: spans are scored in it. token_labels: columns scored by token
        accuracy and never converted (detected automatically: a column whose tags are not all O or X-TYPE).
        loss_weights: per column (default 1). loss_reduction: mean over sentences, sum over the batch (NCRF++'s
        default, to pair with a small learning rate) or mean over tokens."""
        super().__init__()
        problems = []
        if not labels:
            problems.append("task.labels: list at least one label column, e.g. [\"ner\"]")
        if len(set(labels)) != len(labels):
            problems.append(f"task.labels: a column is listed twice: {list(labels)}")
        if token_column in labels:
            problems.append(f"task.labels: '{token_column}' is the token column (task.token_column), not a label")
        for key, names in (("loss_weights", loss_weights or {}), ("token_labels", token_labels)):
            problems += [f"task.{key}.{n}: not one of task.labels ({', '.join(labels)})" for n in names
                         if n not in labels]
        if primary is not None and primary not in labels:
            problems.append(f"task.primary: '{primary}' is not one of task.labels ({', '.join(labels)})")
        if problems:
            raise RecipeError("invalid [task] table", problems)
        self.labels, self.token_column = list(labels), token_column
        self.tag_scheme, self.score_scheme = tag_scheme, score_scheme
        self.token_labels = set(token_labels)
        self.loss_weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in self.labels}
        self.loss_reduction = loss_reduction
        self.primary = primary or self.labels[0]
        # filled by setup_data
        self.kinds: dict[str, str] = {}
        self.tags: dict[str, list[str]] = {}
        self.words: Vocabulary | None = None
        self.chars: Vocabulary | None = None
        self.word_options = VocabOptions()
        self.file_scheme: Scheme = "BIO"
        self.num_trained: dict[str, int] = {}  # tags the model predicts; evaluation may append unseen gold tags
        self.embedding_dim: int | None = None
        self.singletons: list[int] = []  # ids of the words seen once in train (model.singleton_dropout)

    # -- data -----------------------------------------------------------------------------------------------------
    def setup_data(self, data: DataSection, *, splits: Sequence[str], seed: int,
                   artifacts: Mapping[str, Any] | None = None) -> DataBundle:
        corpus = call_builder(DATASETS.get(data.name), data.options, loc="data", provided={"data_dir": data.data_dir})
        if not isinstance(corpus, Corpus):
            raise RecipeError(f"data.name: dataset '{data.name}' does not give CoNLL sentences; the "
                              f"sequence-tagging task reads conll2003 or conll")
        self._check_columns(corpus.columns)
        training = artifacts is None
        wanted = list(dict.fromkeys(["train", *splits] if training else splits))
        needed = splits_to_read(wanted, val_split=data.val_split, holdout=data.holdout)
        loaded = corpus.load(needed) if wanted else {}
        missing = [s for s in wanted if s not in loaded]  # only then: which splits are there (for the message)
        loaded = resolve_splits(loaded, wanted, dataset=corpus.name, val_split=data.val_split, seed=seed,
                                has=corpus.available() if missing else None, holdout=data.holdout)
        facts = self._fit(corpus, loaded["train"], seed) if artifacts is None else self._restore(artifacts)
        bundle_splits = {s: self._tensorise(loaded[s], strict=corpus.strict) for s in splits if s in loaded}
        return DataBundle(bundle_splits, facts=facts, artifacts=self._artifacts())

    def _check_columns(self, columns: Sequence[str]) -> None:
        problems = [f"task.labels[{i}]: column '{c}' is not among data.columns ({', '.join(columns)})"
                    for i, c in enumerate(self.labels) if c not in columns]
        if self.token_column not in columns:
            problems.append(f"task.token_column: '{self.token_column}' is not among data.columns "
                            f"({', '.join(columns)})")
        if problems:
            raise RecipeError("the task and the data disagree on columns", problems)

    def _fit(self, corpus: Corpus, train: LoadedSplit, seed: int) -> dict[str, Any]:
        """Vocabularies, tag sets and pretrained vectors from the training split; returns the model's facts."""
        columns = train.dataset[:]
        self.file_scheme, self.word_options = corpus.scheme, corpus.vocab
        options = corpus.vocab
        tokens = [tok for sentence in columns[self.token_column] for tok in sentence]
        key_counts = Counter(options.key(t) for t in tokens)
        words = Vocabulary.from_counts(key_counts, min_freq=options.min_freq)
        self.singletons = sorted(words.stoi[k] for k, c in key_counts.items() if c == 1 and k in words.stoi)
        self.chars = Vocabulary.from_counts(char_counts(tokens))
        embeddings = None
        path = corpus.embeddings_file()
        if path is not None:
            if options.add_pretrained:
                vectors, dim = read_vectors(path)
            else:
                wanted = set(words.itos) | {w.lower() for w in words.itos}
                vectors, dim = read_vectors(path, lambda w: options.key(w) in wanted)
            keyed: dict[str, list[float]] = {}
            for word, vec in vectors.items():
                keyed.setdefault(options.key(word), vec)
            if options.add_pretrained:
                words = words.extend(k for k in keyed if k not in words.stoi)
            if dim == 0:
                raise DataError(f"{path}: none of the training words has a vector in this file")
            embeddings, found = embedding_matrix(words, keyed, dim, seed=seed)
            covered = sum(c for k, c in key_counts.items() if k in keyed or k.lower() in keyed)
            log.info(f"deepcourse: pretrained vectors for {found:,} of {len(words) - 2:,} vocabulary words "
                     f"({found / max(len(words) - 2, 1):.1%}), covering {covered / max(len(tokens), 1):.1%} of "
                     f"training tokens ({path.name}, {dim}d)", extra={"stderr": True})  # stdout is --json's
        self.words = words
        for name in self.labels:
            values = columns[name]
            self.kinds[name] = "token" if name in self.token_labels else self._kind_of(train, name, values)
            seen = Counter(t for s in self._label_sequences(train, name, values, strict=corpus.strict) for t in s)
            self.tags[name] = sorted(seen, key=lambda t: (t != "O", t[2:], t))  # O first, then by type
        self.num_trained = {name: len(t) for name, t in self.tags.items()}
        self.embedding_dim = None if embeddings is None else int(embeddings.shape[1])
        return self._facts(embeddings)

    def _kind_of(self, split: LoadedSplit, name: str, values: Sequence[Sequence[str]]) -> str:
        """'span' for a column of span tags (O, B-PER, ...), 'token' for one without any (POS). A span column with a
        tag that is neither (X-PER) is an error at its file:line: scored as token accuracy it would quietly turn the
        column's F1 into an accuracy, and model selection with it."""
        seen = {t for s in values for t in s}
        if all(is_span_tag(t) for t in seen):
            return "span"
        if any(t != "O" and is_span_tag(t) for t in seen):
            self._check_span_tags(split, name, values)  # raises, naming the first tag that is neither
        return "token"

    def _check_span_tags(self, split: LoadedSplit, name: str, values: Sequence[Sequence[str]]) -> None:
        """Every tag of a span column is a span tag, strict or not (`data.strict = false` repairs sequences, not tags
        outside every scheme)."""
        example = next((t for s in values for t in s if t != "O" and is_span_tag(t)), None) or next(
            (t for t in self.tags.get(name, []) if t != "O"), "B-PER")
        for i, tags in enumerate(values):
            for j, tag in enumerate(tags):
                if not is_span_tag(tag):
                    raise DataError(f"{split.where(i, j)}: tag '{tag}' in column '{name}' is not a span tag (O or "
                                    f"B-/I-/E-/S-TYPE), but the column holds span tags such as '{example}'; fix the "
                                    f"tag, or set task.token_labels = [\"{name}\"] to score the column by token "
                                    f"accuracy instead of span F1")

    def _facts(self, embeddings: torch.Tensor | None) -> dict[str, Any]:
        """What the model builder may ask for (saved with the run, so evaluate/predict rebuild the same model)."""
        assert self.words is not None and self.chars is not None
        return {"vocab_size": len(self.words), "char_vocab_size": len(self.chars), "embeddings": embeddings,
                "num_tags": dict(self.num_trained), "padding_idx": 0, "unk_idx": self.words.unk_index,
                "singletons": torch.tensor(self.singletons, dtype=torch.long)}

    def _label_sequences(self, split: LoadedSplit, name: str, values: Sequence[Sequence[str]], *,
                         strict: bool) -> Iterator[list[str]]:
        """A column's tags in the training scheme (span columns checked/converted; token columns as they are)."""
        if self.kinds.get(name, "span") != "span":
            yield from (list(s) for s in values)
            return
        if not strict:
            self._check_span_tags(split, name, values)
        for i, tags in enumerate(values):
            if strict:
                bad = first_violation(tags, self.file_scheme)
                if bad is not None:
                    raise DataError(f"{split.where(i, bad[0])}: {bad[1]} (column '{name}'; set data.strict = false "
                                    f"to repair such sequences as conlleval reads them)")
            yield convert(tags, self.file_scheme, self.tag_scheme)

    def _tensorise(self, split: LoadedSplit, *, strict: bool) -> TaggedSentences:
        columns = split.dataset[:] if len(split.dataset) else {c: [] for c in [self.token_column, *self.labels]}
        tag_ids: dict[str, list[list[int]]] = {}
        for name in self.labels:
            index = {t: i for i, t in enumerate(self.tags[name])}
            ids = []
            for seq in self._label_sequences(split, name, columns[name], strict=strict):
                for tag in seq:
                    if tag not in index:  # a tag training never saw: scored as missed, never predicted
                        index[tag] = len(self.tags[name])
                        self.tags[name].append(tag)
                ids.append([index[t] for t in seq])
            tag_ids[name] = ids
        assert self.words is not None and self.chars is not None
        return TaggedSentences(columns[self.token_column], words=self.words, word_options=self.word_options,
                               chars=self.chars, tags=tag_ids)

    @property
    def monitor(self) -> str:  # type: ignore[override]  # Task's plain attribute, computed here from the columns
        """The primary column's F1 (span labels) or accuracy (token labels), prefixed with it when there are more."""
        return self._metric_of(self.primary)

    def _metric_of(self, name: str) -> str:
        metric = "f1" if self.kinds.get(name, "span") == "span" else "accuracy"
        return metric if len(self.labels) == 1 else f"{name}_{metric}"

    def headline_metrics(self, monitor: str) -> list[str]:
        """Every head's score in a multi-task run (`ner_f1`, `pos_accuracy`); the monitored metric otherwise."""
        return [self._metric_of(name) for name in self.labels] if len(self.labels) > 1 else [monitor]

    # -- saved state ----------------------------------------------------------------------------------------------
    def _artifacts(self) -> dict[str, Any]:
        assert self.words is not None and self.chars is not None
        return {"format": ARTIFACTS_FORMAT, "labels": self.labels, "token_column": self.token_column,
                "kinds": self.kinds, "file_scheme": self.file_scheme, "tag_scheme": self.tag_scheme,
                "tags": {name: self.tags[name][:self.num_trained[name]] for name in self.labels},
                "word_options": self.word_options.model_dump(), "words": self.words.to_dict(),
                "chars": self.chars.to_dict(), "embedding_dim": self.embedding_dim, "singletons": self.singletons}

    def _restore(self, artifacts: Mapping[str, Any]) -> dict[str, Any]:
        """State saved by training; returns facts for a model whose weights will be loaded over it (resuming)."""
        if artifacts.get("format") != ARTIFACTS_FORMAT or artifacts.get("labels") != self.labels:
            raise DataError(f"the run's saved vocabularies (artifacts.json) do not match this task (labels "
                            f"{artifacts.get('labels')} vs {self.labels}); was it trained by another version?")
        self.kinds = dict(artifacts["kinds"])
        self.file_scheme, self.tag_scheme = artifacts["file_scheme"], artifacts["tag_scheme"]
        self.tags = {name: list(t) for name, t in artifacts["tags"].items()}
        self.num_trained = {name: len(t) for name, t in self.tags.items()}
        self.word_options = VocabOptions(**artifacts["word_options"])
        self.words = Vocabulary.from_dict(artifacts["words"])
        self.chars = Vocabulary.from_dict(artifacts["chars"])
        self.embedding_dim = artifacts.get("embedding_dim")
        self.singletons = list(artifacts.get("singletons", []))
        shape = None if self.embedding_dim is None else torch.zeros(len(self.words), self.embedding_dim)
        return self._facts(shape)

    # -- model zoo ------------------------------------------------------------------------------------------------
    #: the facts of `recipes/ner_bilstm_crf.toml` on CoNLL-2003 (lower-cased words plus GloVe's, BIOES tags), for
    #: the model zoo's parameter and FLOP counts. The embedding rows are zeros: calloc'd, so no memory until read.
    example_facts: ClassVar[dict[str, Any]] = {"vocab_size": 25_543, "char_vocab_size": 86, "num_tags": {"ner": 17},
                                               "embeddings": torch.zeros(25_543, 50), "padding_idx": 0,
                                               "unk_idx": 1}
    example_input = f"one sentence of {len(EXAMPLE_SENTENCE.split())} tokens (CoNLL-2003's average is 14.5)"

    def setup_example(self, facts: Mapping[str, Any], batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Set up as for a trained run with `facts`' tag counts, and return `batch_size` copies of EXAMPLE_SENTENCE
        batched as real data is (distinct word forms, characters), so FLOPs are counted on the path `evaluate`
        runs. The recipe's label columns stay as they are: each must have its tag count in the facts."""
        tokens = EXAMPLE_SENTENCE.split()
        num_tags = facts["num_tags"]
        counts = dict(num_tags) if isinstance(num_tags, Mapping) else {self.labels[0]: int(num_tags)}
        missing = [name for name in self.labels if name not in counts]
        if missing:
            raise ValueError(f"example facts give no num_tags for the label column(s) {', '.join(missing)}")
        self.num_trained = {name: int(counts[name]) for name in self.labels}
        data = TaggedSentences([tokens] * batch_size, words=Vocabulary(tokens), word_options=VocabOptions(),
                               chars=Vocabulary(sorted(set("".join(tokens)))),
                               tags={name: [[0] * len(tokens)] * batch_size for name in self.labels})
        return data.__getitems__(range(batch_size))

    # -- hot path -------------------------------------------------------------------------------------------------
    def _weighted(self, out: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # sum() starts from 0, an int to mypy; there is always a label, so the result is a tensor
        return sum(self.loss_weights[name] * out[f"loss_{name}"] for name in self.labels)  # type: ignore[return-value]

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        per_sentence = self._weighted(model(batch))
        if self.loss_reduction == "sum":
            return per_sentence.sum()
        if self.loss_reduction == "token_mean":
            return per_sentence.sum() / batch["lengths"].sum()
        return per_sentence.mean()

    def evaluation_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Gold tags training never saw (ids past the model's tags) count as missed in the metrics; the loss,
        # which has no score for them, reads them as the first tag (O).
        known = {f"tags_{name}": batch[f"tags_{name}"].masked_fill(batch[f"tags_{name}"] >= self.num_trained[name], 0)
                 for name in self.labels}
        out = model({**batch, **known}, decode=True)
        result = {"loss": self._weighted(out)}
        for name in self.labels:
            result[f"preds_{name}"] = out[f"pred_{name}"]
            result[f"targets_{name}"] = batch[f"tags_{name}"]
        return result

    def create_metrics(self) -> MetricCollection:
        metrics: list[Metric] = [MeanLoss()]
        for name in self.labels:
            prefix = f"{name}_" if len(self.labels) > 1 else ""
            preds, targets = f"preds_{name}", f"targets_{name}"
            if self.kinds.get(name) == "span":
                metrics.append(SpanF1(self.tags[name], tag_scheme=self.tag_scheme, score_scheme=self.score_scheme,
                                      prefix=prefix, preds=preds, targets=targets))
            metrics.append(Accuracy(name=f"{prefix}accuracy", preds=preds, targets=targets))
        return MetricCollection(*metrics)

    def describe_metrics(self, metrics: Mapping[str, Any]) -> Iterable[str]:
        for name in self.labels:
            prefix = f"{name}_" if len(self.labels) > 1 else ""
            per_type = metrics.get(f"{prefix}per_type")
            if not per_type:
                continue
            yield ""
            yield f"{name + ' type':<14} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"
            for type_, row in per_type.items():
                yield (f"{type_:<14} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} "
                       f"{row['support']:>8}")

    def prediction_rows(self, data: Any, start: int, batch: Mapping[str, torch.Tensor],
                        outputs: Mapping[str, torch.Tensor]) -> Iterator[str]:
        """conlleval's input: one token per line with the gold and the predicted tag of each label column (span
        columns in the scoring scheme, so conlleval on the file gives the run's F1), the primary column last (the
        pair conlleval reads), and a blank line after each sentence."""
        order = [name for name in self.labels if name != self.primary] + [self.primary]
        lengths = batch["lengths"].tolist()
        columns = {name: (outputs[f"targets_{name}"].tolist(), outputs[f"preds_{name}"].tolist()) for name in order}
        for i, length in enumerate(lengths):
            tokens = list(data.tokens[start + i])
            assert len(tokens) == length, "evaluation batches come in the split's order"
            values: list[list[str]] = [tokens]
            for name in order:
                names = self.tags[name]
                gold = [names[t] for t in columns[name][0][i][:length]]
                pred = [names[t] if 0 <= t < self.num_trained[name] else "O" for t in columns[name][1][i][:length]]
                if self.kinds[name] == "span":
                    gold, pred = (convert(tags, self.tag_scheme, self.score_scheme) for tags in (gold, pred))
                values += [gold, pred]
            yield format_sentence(values) + "\n"

    def explain(self, model: nn.Module, inputs: Sequence[str], *, options: ExplainOptions, device: torch.device,
                out: Path) -> Iterator[Explanation]:
        """The CRF transitions of each head; per sentence, the marginal probability of every predicted tag, the
        n best tag paths with their probabilities, and token saliency (integrated gradients over the word
        embeddings) for the predicted entities (or `--target`)."""
        from .explain import explain_sentences

        return explain_sentences(self, model, inputs, options=options, device=device, out=out)

    def export_graph(self, model: nn.Module, facts: Mapping[str, Any], artifacts: Mapping[str, Any]) -> ExportGraph:
        """The network up to each label's tag scores; decoding (Viterbi for a CRF) runs on the host (`.export`)."""
        from .export import export_graph, restored

        if self.words is None:  # not set up from a run's artifacts (the model zoo)
            restored(self, facts)
        return export_graph(self, model)

    def report(self, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any],
               out: Path) -> tuple[list[Figure], list[str]]:
        """Precision / recall / F1 per entity type (accuracy per tag for token columns) over the whole evaluation
        split, and example sentences with the mistakes marked: where the run's F1 comes from, and what its errors
        look like."""
        from .report import write_figures

        return write_figures(self, model, recipe, artifacts, out)

    # -- analysis: ensembles, paired comparisons, breakdowns ------------------------------------------------------
    def label_names(self) -> dict[str, list[str]]:
        return {name: self.tags[name][:self.num_trained[name]] for name in self.labels}

    def ensemble(self, members: Sequence[nn.Module]) -> nn.Module:
        """Averaged emissions and transitions for CRF heads, averaged tag probabilities for softmax heads (why not a
        vote over spans: `models/ensemble.py`)."""
        from .models.ensemble import TaggerEnsemble

        return TaggerEnsemble(members)

    def paired_items(self, data: Any, start: int, batch: Mapping[str, torch.Tensor],
                     outputs: Mapping[str, torch.Tensor]) -> Iterator[PairedItem]:
        """One item per sentence of the primary column: its spans (scoring scheme) right, predicted and gold for a
        span column, its tokens right out of its length for a token column."""
        from .breakdown import sentence_items

        return sentence_items(self, data, start, batch, outputs)

    def breakdown(self, model: nn.Module, recipe: Recipe, artifacts: Mapping[str, Any], *, split: str | None,
                  data_dir: str | Path | None) -> tuple[dict[str, Any], list[str]]:
        """Span F1 of the primary column by entities seen / unseen in training (the surface form with the same type
        in the training split), by the share of the entity's words out of the training vocabulary, and by type."""
        from .breakdown import breakdown

        return breakdown(self, model, recipe, artifacts, split=split, data_dir=data_dir)

    # -- inference ------------------------------------------------------------------------------------------------
    @staticmethod
    def sentences(inputs: Sequence[str]) -> Iterator[tuple[str, list[str]]]:
        """(source, tokens) of raw text (one sentence per input, split on whitespace) or of every sentence of a
        CoNLL file (its first column is read as tokens, other columns are ignored)."""
        for item in inputs:
            path = Path(item)
            if "\n" not in item and path.is_file():
                for line, columns in iter_sentences(path, None):
                    yield f"{path}:{line}", columns["token"]
            elif item.split():
                yield "text", item.split()
            else:
                raise UserError(f"input {item!r} is empty text: a tagger tags at least one word; give a sentence, "
                                f"or a CoNLL file")

    def batch_of(self, sentences: Sequence[Sequence[str]], device: torch.device) -> dict[str, torch.Tensor]:
        """Non-empty sentences batched as the model reads them (word ids, characters, lengths), on `device`."""
        assert self.words is not None and self.chars is not None
        data = TaggedSentences(sentences, words=self.words, word_options=self.word_options, chars=self.chars)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v  # host lists stay on the host
                for k, v in data.__getitems__(range(len(sentences))).items()}

    def to_file_scheme(self, name: str, ids: Sequence[int]) -> list[str]:
        """Tag ids of column `name` as the data files write them (span columns in the files' scheme)."""
        tags = [self.tags[name][i] for i in ids]
        return convert(tags, self.tag_scheme, self.file_scheme) if self.kinds[name] == "span" else tags

    def predict(self, model: nn.Module, inputs: Sequence[str], *, batch_size: int,
                device: torch.device) -> Iterator[dict[str, Any]]:
        """Tag raw text (one sentence per input, split on whitespace) or every sentence of a CoNLL file (its
        first column is read as tokens, other columns are ignored). With predict_options["nbest"] = K > 1, also
        the K best tag paths of each column with their probabilities (`nbest`)."""
        chunk: list[tuple[str, list[str]]] = []
        for item in self.sentences(inputs):
            chunk.append(item)
            if len(chunk) == batch_size:
                yield from self._predict_chunk(model, chunk, device)
                chunk = []
        if chunk:
            yield from self._predict_chunk(model, chunk, device)

    def _predict_chunk(self, model: nn.Module, chunk: list[tuple[str, list[str]]],
                       device: torch.device) -> Iterator[dict[str, Any]]:
        from .explain import output_paths

        nbest = int(getattr(self, "predict_options", {}).get("nbest", 1))
        nonempty = [tokens for _, tokens in chunk if tokens]
        decoded: dict[str, list[list[int]]] = {name: [] for name in self.labels}
        out: dict[str, torch.Tensor] = {}
        if nonempty:
            batch = self.batch_of(nonempty, device)
            with torch.no_grad():
                out = model(batch, decode=True, scores=nbest > 1)
            for name in self.labels:
                decoded[name] = out[f"pred_{name}"].cpu().tolist()
        row = 0
        for source, tokens in chunk:
            result: dict[str, Any] = {"source": source, "tokens": tokens, "tags": {}, "entities": {}}
            for name in self.labels:
                tags = self.to_file_scheme(name, decoded[name][row][:len(tokens)]) if tokens else []
                if self.kinds[name] == "span":
                    result["entities"][name] = self.entities(tokens, tags)
                result["tags"][name] = tags
                if nbest > 1:
                    paths = output_paths(self, model, name, out[f"scores_{name}"][row, :len(tokens)], nbest) \
                        if tokens else []
                    result.setdefault("nbest", {})[name] = [
                        {**path, "probability": round(path["probability"], 6),
                         **({"entities": self.entities(tokens, path["tags"])} if self.kinds[name] == "span" else {})}
                        for path in paths]
            if not result["entities"]:
                del result["entities"]
            row += bool(tokens)
            yield result

    @staticmethod
    def entities(tokens: Sequence[str], tags: Sequence[str]) -> list[dict[str, Any]]:
        return [{"type": t, "start": s, "end": e, "text": " ".join(tokens[s:e])} for t, s, e in spans(tags)]

    def format_prediction(self, result: Mapping[str, Any]) -> str:
        """CoNLL: one token per line with a tag column per label, and a blank line after the sentence. With n-best
        paths (NCRF++'s layout): a `# nbest LABEL: p1 p2 ...` line per column, then a tag column per path."""
        if "nbest" not in result:
            columns = [result["tokens"], *(result["tags"][name] for name in self.labels)]
            return format_sentence(columns) + "\n"
        lines = [f"# nbest {name}: " + " ".join(f"{path['probability']:.4f}" for path in result["nbest"][name])
                 for name in self.labels]
        lines += [line for name in self.labels if (line := self.merged_note(name, result["nbest"][name]))]
        columns = [result["tokens"], *(path["tags"] for name in self.labels for path in result["nbest"][name])]
        return "\n".join(lines) + "\n" + (format_sentence(columns) + "\n" if result["tokens"] else "")

    def merged_note(self, name: str, paths: Sequence[Mapping[str, Any]]) -> str:
        """'# merged ner: answer 1 sums 2 BIOES paths that read alike in BIO', or '' when no answer merges paths."""
        sums = [f"answer {i} sums {path['paths']} {self.tag_scheme} paths" for i, path in enumerate(paths, 1)
                if path.get("paths", 1) > 1]
        return f"# merged {name}: {', '.join(sums)} that read alike in {self.file_scheme}" if sums else ""
