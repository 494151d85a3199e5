"""Sentiment analysis (text classification): labelled texts -> BiRNN classifier."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nlpseq.batching import TextBatch, TokenStore, bucket_batches
from nlpseq.checkpoint import save_objects
from nlpseq.corpora import LabelledData, iter_labelled, load_hub, read_labelled
from nlpseq.embeddings import (
    extend_vocabulary,
    initial_vectors,
    load_fixed_vectors,
    save_fixed_vectors,
)
from nlpseq.errors import NlpseqError
from nlpseq.metrics import ClassificationCounts
from nlpseq.models.classifier import ClassifierConfig, TextClassifier
from nlpseq.tasks.base import Log, Task, between_parts, shard, text_list
from nlpseq.tokenize import UNK, TextTokenizer
from nlpseq.vocab import LabelVocab

TOKENIZER = "tokenizer.json"
LABELS = "labels.json"


def file_format(path: str, default: str) -> str:
    """The labelled-file format a path's suffix names, else ``default``."""
    name = path.lower().removesuffix(".gz")
    for suffix in ("tsv", "csv", "jsonl"):
        if name.endswith("." + suffix):
            return suffix
    return default


class SentimentTask(Task):
    """Texts with one label each; accuracy and F1."""

    name = "sentiment"
    ModelConfig = ClassifierConfig
    formats = ("tsv", "csv", "jsonl", "hub")
    metrics = {"accuracy": True, "macro_f1": True, "loss": False}
    default_metric = "accuracy"

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self.tokenizer: TextTokenizer | None = None
        self.labels: LabelVocab | None = None
        self.trained_vocab_size = 0  # ids from here on have fixed pretrained vectors
        self.fixed_vectors: torch.Tensor | None = None  # (ids - trained_vocab_size, E)
        self.train_ids = TokenStore([])
        self.train_labels = torch.zeros(0, dtype=torch.long)
        self.dev_ids: list[list[int]] = []
        self.dev_labels: list[int] = []

    # --- data ----------------------------------------------------------------------------
    def _read(self, path: str, split: str, require_labels: bool = True) -> LabelledData:
        data = self.config.data
        if data.format == "hub":
            rows = load_hub(data.hub_name, data.hub_config, split)
            texts = [str(t) for t in rows[data.text_column]]
            labels = [str(v) for v in rows[data.label_column]]
            return LabelledData(texts, labels, list(range(1, len(texts) + 1)), data.hub_name)
        return self._read_file(path, require_labels)

    def _read_file(self, path: str, require_labels: bool = True) -> LabelledData:
        """A local file in the format its suffix names, else data.format (tsv for hub data)."""
        data = self.config.data
        fmt = file_format(path, "tsv" if data.format == "hub" else data.format)
        return read_labelled(
            path, fmt, data.text_column, data.label_column, require_labels=require_labels
        )

    def _encode(self, data: LabelledData) -> tuple[list[list[int]], list[int]]:
        ids = self.tokenizer.encode_batch(data.texts)
        labels = [
            self.labels.encode(v, data.path, line) for v, line in zip(data.labels, data.lines)
        ]
        return ids, labels

    def prepare(self, log: Log, artifacts: Path | None = None) -> None:
        data = self.config.data
        train = self._read(data.train, data.train_split)
        dev = None
        if data.dev_size and not data.dev and data.format != "hub":
            train, dev = hold_out(train, data.dev_size, self.config.source or None)
        if data.limit:
            train = LabelledData(
                train.texts[: data.limit], train.labels[: data.limit], train.lines, train.path
            )
        if artifacts is not None:
            self.load_artifacts(artifacts)
        else:
            tokenizer = TextTokenizer.train(train.texts, self.config.tokenizer)
            self.labels = LabelVocab.from_data(train.labels)
            emb = self.config.embeddings
            self.tokenizer, self.trained_vocab_size = extend_vocabulary(
                tokenizer, emb, emb.extend_vocab)
        ids, labels = self._encode(train)
        self.train_ids, self.train_labels = TokenStore(ids), torch.tensor(labels)
        log(f"train: {len(self.train_ids)} examples from {train.path}; "
            f"vocabulary {self.trained_vocab_size} trained + "
            f"{self.tokenizer.vocab_size - self.trained_vocab_size} fixed; "
            f"labels {', '.join(self.names)}")
        if data.dev or data.format == "hub":
            dev = self._read(data.dev, data.dev_split)
        if dev is not None:
            self.dev_ids, self.dev_labels = self._encode(dev)
            held = " (held out of train: data.dev_size)" if not data.dev else ""
            log(f"dev: {len(self.dev_ids)} examples from {dev.path}{held}")

    def save_artifacts(self, directory: Path) -> None:
        save_objects(directory, {TOKENIZER: self.tokenizer, LABELS: self.labels})
        save_fixed_vectors(directory, self.fixed_vectors)

    def load_artifacts(self, directory: Path) -> None:
        self.tokenizer = TextTokenizer.load(directory / TOKENIZER)
        self.labels = LabelVocab.load(directory / LABELS)
        self.fixed_vectors, self.trained_vocab_size = load_fixed_vectors(
            directory, self.tokenizer.vocab_size)

    @property
    def names(self) -> list[str]:
        """The labels as printed: ``data.label_names`` where given, else as written."""
        return label_names(self.config.data.label_names, self.labels.labels,
                           self.config.source or None)

    # --- model ---------------------------------------------------------------------------
    def build_model(self, log: Log, pretrained: bool = True) -> nn.Module:
        m, emb = self.config.model, self.config.embeddings
        trained, matrix = self.trained_vocab_size, None
        if pretrained:  # else the fixed rows came with the run directory's artifacts
            matrix, self.fixed_vectors = initial_vectors(
                emb, self.tokenizer.vocabulary(), trained, m.embedding_dim, self.config.train.seed,
                texts=self._word2vec_texts)
        return TextClassifier(
            m, trained, len(self.labels), fixed_vectors=self.fixed_vectors, unk_id=UNK,
            pretrained=matrix, freeze_embeddings=emb.freeze and matrix is not None,
            sparse_embedding=emb.lazy_updates,
        )

    def _word2vec_texts(self) -> Iterator[Sequence[int]]:
        """Token ids of the training texts, then of ``embeddings.word2vec_text``'s."""
        yield from self.train_ids.sequences()
        path = self.config.embeddings.word2vec_text
        if path:
            yield from self.tokenizer.encode_batch(self._read_file(path, False).texts)

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[TextBatch]:
        t = self.config.train
        order = bucket_batches(
            self.train_ids.lengths.tolist(), t.batch_size, seed=self.epoch_seed(epoch),
            pool=t.bucket_pool,
        )
        return [
            self.train_ids.collate(b, self.train_labels) for b in shard(order, rank, world_size)
        ]

    # --- evaluation and prediction -------------------------------------------------------
    @torch.no_grad()
    def _probabilities(self, model: nn.Module, ids: list[list[int]]) -> torch.Tensor:
        """Class probabilities ``(N, C)`` in input order, batched by length."""
        model.eval()
        store = TokenStore(ids)
        out = torch.empty(len(ids), len(self.labels))
        for batch in bucket_batches(
            store.lengths.tolist(), self.config.eval.batch_size, shuffle=False,
            max_tokens=self.config.eval.max_tokens,
        ):
            b = store.collate(batch).to(self.device)
            out[batch] = model.logits(b.ids, b.lengths).float().softmax(-1).cpu()
        return out

    def _scores(self, model: nn.Module, parts: Iterable[tuple[list[list[int]], list[int]]]
                ) -> dict[str, Any]:
        """Metrics over ``parts`` of (ids, gold labels), from counts and a loss summed over
        every part."""
        counts = ClassificationCounts(self.names)
        loss_sum, n = 0.0, 0
        for ids, gold in parts:
            probs = self._probabilities(model, ids)
            counts.add(gold, probs.argmax(-1).tolist())
            picked = probs[torch.arange(len(gold)), torch.tensor(gold)].clamp_min(1e-12)
            loss_sum, n = loss_sum - float(picked.log().double().sum()), n + len(gold)
        result = counts.result()
        result["loss"] = loss_sum / n if n else float("nan")
        return result

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        self.require_dev(bool(self.dev_ids))
        return self._scores(model, [(self.dev_ids, self.dev_labels)])

    def evaluate_files(self, paths: list[str]) -> dict[str, Any]:
        """Metrics on one labelled file, read and scored a part at a time (memory stays
        bounded however long the file is)."""
        if len(paths) != 1:
            raise NlpseqError("sentiment evaluation takes one data file")
        data = self.config.data
        if data.format == "hub":
            parts: Iterable[LabelledData] = [self._read(paths[0], data.dev_split)]
        else:
            parts = iter_labelled(paths[0], file_format(paths[0], data.format),
                                  data.text_column, data.label_column)
        return self._scores(self.model, (self._encode(part) for part in between_parts(parts)))

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Label and class probabilities for each text."""
        texts = text_list(texts, "predict")
        probs = self._probabilities(self.model, self.tokenizer.encode_batch(texts))
        names = self.names
        return [  # rows as Python lists: indexing a tensor row by row costs more than the model
            {
                "label": names[max(range(len(row)), key=row.__getitem__)],
                "probabilities": dict(zip(names, row)),
            }
            for row in probs.tolist()
        ]

    def format_output(self, result: dict[str, Any], as_json: bool) -> str:
        return json.dumps(result) if as_json else result["label"]


def hold_out(data: LabelledData, size: int, source: str | None = None,
             ) -> tuple[LabelledData, LabelledData]:
    """``data`` split into (train, dev) with ``size`` dev examples, chosen at random with a
    fixed seed so that every run of a pipeline holds out the same ones; both keep file order."""
    if size >= len(data.texts):
        raise NlpseqError(f"data.dev_size {size} leaves no training examples: {data.path} has "
                          f"{len(data.texts)}", source)
    order = torch.randperm(len(data.texts), generator=torch.Generator().manual_seed(0)).tolist()

    def part(indices: list[int]) -> LabelledData:
        indices.sort()
        return LabelledData([data.texts[i] for i in indices], [data.labels[i] for i in indices],
                            [data.lines[i] for i in indices], data.path)

    return part(order[size:]), part(order[:size])


def label_names(spec: str, labels: list[str], source: str | None = None) -> list[str]:
    """Display names for ``labels`` from ``"raw: name, raw: name"``; a raw label the model does
    not know, or a malformed pair, is a one-line error."""
    names = {}
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        raw, colon, name = pair.partition(":")
        if not colon or not raw.strip() or not name.strip():
            raise NlpseqError(f"data.label_names: {pair!r} is not 'label: name'", source)
        if raw.strip() not in labels:
            raise NlpseqError(f"data.label_names: the data has no label {raw.strip()!r} "
                              f"(labels: {', '.join(labels)})", source)
        names[raw.strip()] = name.strip()
    return [names.get(label, label) for label in labels]
