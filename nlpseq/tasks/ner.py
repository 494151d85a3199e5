"""Named entity recognition: CoNLL column files -> BiRNN(-CRF) tagger -> entity F1.

Tags are read in the scheme the data is written in (``data.tag_scheme``, IOB1 for
CoNLL-2003), converted to the scheme the model trains in (``model.train_scheme``, BIOES by
default) and converted back for evaluation and prediction, so outputs are always in the
scheme of the input. Entity F1 is computed like conlleval (span and type must both match).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlpseq.batching import TokenStore, bucket_batches
from nlpseq.checkpoint import save_objects
from nlpseq.config import TokenizerConfig
from nlpseq.corpora import TaggedData, iter_conll, looks_like_conll, read_conll, read_lines
from nlpseq.embeddings import (
    extend_vocabulary,
    initial_vectors,
    load_fixed_vectors,
    save_fixed_vectors,
)
from nlpseq.errors import NlpseqError
from nlpseq.models.tagger import SequenceTagger, TaggerBatch, TaggerConfig, casing
from nlpseq.tagschemes import (
    Span,
    SpanF1,
    allowed_transitions,
    convert_tags,
    scheme_tags,
    spans_to_tags,
    split_tag,
    tags_to_spans,
    validate_tag,
)
from nlpseq.tasks.base import Log, Task, between_parts, shard, text_list
from nlpseq.tokenize import TextTokenizer
from nlpseq.vocab import LabelVocab

TOKENIZER = "tokenizer.json"
CHARS = "chars.json"
TAGS = "tags.json"

MAX_WORD_CHARS = 40  # longer tokens (URLs, ...) are cut for the character encoder


class TokenTable:
    """Sentences as a :class:`TokenStore` of distinct-token-string ids (0 is padding), their
    tags as a second one, and per-string features (word id, casing, characters) computed
    once per distinct string."""

    def __init__(
        self,
        sentences: Sequence[Sequence[str]],
        tags: Sequence[Sequence[int]] | None,
        featurize: Callable[[list[str]], dict[str, torch.Tensor]],
    ):
        types: dict[str, int] = {"": 0}
        self.tokens = TokenStore([[types.setdefault(t, len(types)) for t in s]
                                  for s in sentences])
        self.tags = TokenStore(tags) if tags is not None else None
        self.type_features = featurize(list(types))

    @property
    def lengths(self) -> torch.Tensor:
        return self.tokens.lengths

    def __len__(self) -> int:
        return len(self.tokens)

    def collate(self, indices: Sequence[int]) -> TaggerBatch:
        batch = self.tokens.collate(indices)
        types = batch.ids  # (B, T), 0 at padding
        distinct, word_index = torch.unique(types, return_inverse=True)  # (U,), (B, T)
        features = self.type_features
        chars = features["chars"][distinct]  # (U, Lmax)
        chars = chars[:, : max(int(features["char_lengths"][distinct].max()), 1)]
        return TaggerBatch(
            ids=features["ids"][types], lengths=batch.lengths, mask=batch.mask,
            casing=features["casing"][types], word_chars=chars, word_index=word_index,
            tags=self.tags.collate(indices).ids if self.tags is not None else None,
        )


class NerTask(Task):
    """Tag each token of each sentence; entity precision, recall and F1 as conlleval."""

    name = "ner"
    ModelConfig = TaggerConfig
    formats = ("conll",)
    metrics = {"f1": True, "precision": True, "recall": True, "accuracy": True}
    default_metric = "f1"

    input_options = ("input_format",)

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self.tokenizer: TextTokenizer | None = None
        self.char_tokenizer: TextTokenizer | None = None
        self.tags: LabelVocab | None = None
        self.trained_vocab_size = 0  # word ids from here on have fixed pretrained vectors
        self.fixed_vectors: torch.Tensor | None = None  # (ids - trained_vocab_size, E)
        self.train_table: TokenTable | None = None
        self.dev_data: TaggedData | None = None
        self.dev_table: TokenTable | None = None

    # --- schemes ---------------------------------------------------------------------------
    @property
    def data_scheme(self) -> str:
        return self.config.data.tag_scheme.upper()

    @property
    def train_scheme(self) -> str:
        return self.config.model.train_scheme.upper()

    def _require_conll(self) -> None:
        if self.config.data.format != "conll":
            raise NlpseqError(f"the ner task reads CoNLL files (data.format: conll), not "
                              f"{self.config.data.format!r}", self.config.source)

    def _read(self, path: str, require_tags: bool = True) -> TaggedData:
        self._require_conll()
        data = self.config.data
        return read_conll(path, data.tag_column, self.data_scheme, require_tags=require_tags)

    def _check_gold_types(self, data: TaggedData) -> None:
        """Raise NlpseqError at the first gold tag whose entity type the run does not know.

        Only the type is checked: the prefix was checked against the data scheme on reading,
        and every tag of a known type has a counterpart in the training scheme. Unchecked, an
        unknown type would be scored as an entity type the model can never predict.
        """
        types = set(self.entity_types)
        known: set[str] = {"O"}
        for tags, start in zip(data.tags, data.lines):
            for offset, tag in enumerate(tags):
                if tag in known:
                    continue
                if split_tag(tag)[1] not in types:
                    names = ", ".join(scheme_tags(self.entity_types, self.data_scheme))
                    # a sentence's tokens are consecutive lines, so this is the tag's line
                    raise NlpseqError(f"unknown tag {tag!r} (known: {names})", data.path,
                                      start + offset)
                known.add(tag)

    def _tag_ids(self, data: TaggedData) -> list[list[int]]:
        """Gold tags converted to the training scheme, as ids."""
        self._check_gold_types(data)
        index = self.tags.index
        return [[index[t] for t in convert_tags(tags, self.data_scheme, self.train_scheme)]
                for tags in data.tags]

    @property
    def entity_types(self) -> list[str]:
        return sorted({split_tag(t)[1] for t in self.tags.labels if t != "O"})

    # --- features of distinct token strings ---------------------------------------------
    def _featurize(self, types: list[str]) -> dict[str, torch.Tensor]:
        """Per-distinct-token features; ``types[0]`` is the padding type."""
        words = types[1:]
        chars = self.char_tokenizer.encode_batch([t[:MAX_WORD_CHARS] for t in words])
        lengths = np.array([0, *map(len, chars)], dtype=np.int64)
        # the rows filled from one flat array through a mask: far faster than row by row
        matrix = np.zeros((len(types), max(int(lengths.max()), 1)), dtype=np.int64)
        matrix[np.arange(matrix.shape[1]) < lengths[:, None]] = np.fromiter(
            itertools.chain.from_iterable(chars), dtype=np.int64, count=int(lengths.sum()))
        return {
            "ids": torch.tensor([0, *self.tokenizer.encode_words(words)], dtype=torch.long),
            "casing": torch.tensor([0, *map(casing, words)], dtype=torch.long),
            "chars": torch.from_numpy(matrix),
            "char_lengths": torch.from_numpy(lengths),
        }

    def _table(self, data: TaggedData, with_tags: bool = True) -> TokenTable:
        tags = self._tag_ids(data) if with_tags else None
        return TokenTable(data.tokens, tags, self._featurize)

    # --- training side ------------------------------------------------------------------------
    def prepare(self, log: Log, artifacts: Path | None = None) -> None:
        data, emb = self.config.data, self.config.embeddings
        validate_tag("O", self.train_scheme)  # rejects unknown schemes early
        train = self._read(data.train)
        if data.limit:
            train = TaggedData(train.tokens[: data.limit], train.tags[: data.limit],
                               train.lines[: data.limit], train.path)
        if artifacts is not None:
            self.load_artifacts(artifacts)
        else:
            tokenizer = TextTokenizer.train(
                (" ".join(s) for s in train.tokens), self.config.tokenizer
            )
            # model.frozen_vectors: every word of the file keeps its vector
            extra = emb.extend_vocab or (-1 if self.config.model.frozen_vectors else 0)
            self.tokenizer, self.trained_vocab_size = extend_vocabulary(tokenizer, emb, extra)
            char_config = TokenizerConfig(kind="char", min_frequency=1, max_size=100000)
            self.char_tokenizer = TextTokenizer.train(
                (" ".join(s) for s in train.tokens), char_config
            )
            types = sorted({split_tag(t)[1] for s in train.tags for t in s if t != "O"})
            self.tags = LabelVocab(scheme_tags(types, self.train_scheme))
        self.train_table = self._table(train)
        log(f"train: {len(train.tokens)} sentences, {int(self.train_table.lengths.sum())} tokens "
            f"from {train.path}; vocabulary {self.trained_vocab_size} trained + "
            f"{self.tokenizer.vocab_size - self.trained_vocab_size} fixed words, "
            f"{self.char_tokenizer.vocab_size} characters; tags {self.train_scheme} "
            f"({', '.join(self.entity_types)})")
        if data.dev:
            self.dev_data = self._read(data.dev)
            self.dev_table = self._table(self.dev_data)
            log(f"dev: {len(self.dev_data.tokens)} sentences from {self.dev_data.path}")

    def save_artifacts(self, directory: Path) -> None:
        save_objects(directory, {TOKENIZER: self.tokenizer, CHARS: self.char_tokenizer,
                                 TAGS: self.tags})
        save_fixed_vectors(directory, self.fixed_vectors)

    def load_artifacts(self, directory: Path) -> None:
        self.tokenizer = TextTokenizer.load(directory / TOKENIZER)
        self.char_tokenizer = TextTokenizer.load(directory / CHARS)
        self.tags = LabelVocab.load(directory / TAGS)
        self.fixed_vectors, self.trained_vocab_size = load_fixed_vectors(
            directory, self.tokenizer.vocab_size)

    def build_model(self, log: Log, pretrained: bool = True) -> nn.Module:
        m, emb = self.config.model, self.config.embeddings
        matrix = None
        if pretrained:  # else the fixed rows came with the run directory's artifacts
            matrix, self.fixed_vectors = initial_vectors(
                emb, self.tokenizer.vocabulary(), self.trained_vocab_size, m.embedding_dim,
                self.config.train.seed)
        constraints = allowed_transitions(self.tags.labels, self.train_scheme)
        return SequenceTagger(
            m, self.trained_vocab_size, self.char_tokenizer.vocab_size, len(self.tags),
            constraints=constraints, pretrained=matrix,
            freeze_embeddings=emb.freeze and matrix is not None,
            fixed_vectors=self.fixed_vectors, sparse_embedding=emb.lazy_updates,
        )

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[TaggerBatch]:
        t = self.config.train
        order = bucket_batches(
            self.train_table.lengths.tolist(), t.batch_size, seed=self.epoch_seed(epoch),
            pool=t.bucket_pool,
        )
        return [self.train_table.collate(b) for b in shard(order, rank, world_size)]

    # --- decoding and scoring -------------------------------------------------------------
    @torch.no_grad()
    def _decode_spans(self, model: nn.Module, table: TokenTable) -> list[list[Span]]:
        """Predicted entity spans of every sentence of ``table``, input order."""
        model.eval()
        labels, scheme = self.tags.labels, self.train_scheme
        out: list[list[Span]] = [[] for _ in range(len(table))]
        for indices in bucket_batches(
            table.lengths.tolist(), self.config.eval.batch_size, shuffle=False,
            max_tokens=self.config.eval.max_tokens,
        ):
            batch = table.collate(indices).to(self.device)
            for index, path in zip(indices, model.decode(batch)):
                out[index] = tags_to_spans([labels[i] for i in path], scheme)
        return out

    def _decode(self, model: nn.Module, table: TokenTable) -> list[list[str]]:
        """Predicted tags of every sentence of ``table``, in the data scheme, input order."""
        return [spans_to_tags(spans, length, self.data_scheme) for spans, length
                in zip(self._decode_spans(model, table), table.lengths.tolist())]

    def _scores(self, model: nn.Module, parts: Iterable[tuple[TaggedData, TokenTable]]
                ) -> dict[str, Any]:
        """Entity F1 from span counts summed over ``parts`` of (gold data, its table)."""
        metric, sentences = SpanF1(), 0
        for data, table in parts:
            predicted = self._decode(model, table)
            for gold, guess in zip(data.tags, predicted):
                metric.add(gold, guess, self.data_scheme)
            sentences += len(predicted)
        result = metric.result()
        result["n_sentences"] = sentences
        return result

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        self.require_dev(self.dev_table is not None)
        return self._scores(model, [(self.dev_data, self.dev_table)])

    def evaluate_files(self, paths: list[str]) -> dict[str, Any]:
        """Entity F1 over CoNLL files, read and tagged a block of sentences at a time, so
        memory stays bounded however long the files are."""
        if not paths:
            raise NlpseqError("give at least one CoNLL file to evaluate")
        self._require_conll()
        data = self.config.data

        def parts() -> Iterator[tuple[TaggedData, TokenTable]]:
            for path in paths:
                for part in iter_conll(read_lines(path), path, data.tag_column,
                                       self.data_scheme):
                    self._check_gold_types(part)
                    yield part, self._table(part, with_tags=False)

        return self._scores(self.model, between_parts(parts()))

    # --- prediction --------------------------------------------------------------------------
    def predict(
        self, sentences: Sequence[str | Sequence[str]], spans: bool = False
    ) -> list[list[str]] | list[list[dict[str, Any]]]:
        """Tags (in the data's scheme) for each sentence, or with ``spans`` its entities as
        ``{"type", "start", "end", "text"}`` (end exclusive). A sentence is a list of tokens
        or a string split on whitespace."""
        tokens = [s.split() if isinstance(s, str) else list(s)
                  for s in text_list(sentences, "predict")]
        found = self._predict_spans(tokens)
        if not spans:
            return [spans_to_tags(row, len(words), self.data_scheme)
                    for words, row in zip(tokens, found)]
        return [_span_records(words, row) for words, row in zip(tokens, found)]

    def _predict_spans(self, tokens: list[list[str]]) -> list[list[Span]]:
        present = [i for i, s in enumerate(tokens) if s]
        out: list[list[Span]] = [[] for _ in tokens]
        if present:
            data = TaggedData([tokens[i] for i in present], None, present, "<input>")
            for i, row in zip(present, self._decode_spans(self.model, self._table(data, False))):
                out[i] = row
        return out

    def read_input(self, lines: Iterator[str],
                   input_format: str = "auto") -> Iterator[tuple[list[str], str]]:
        """Sentences, each with the tag scheme to answer in: CoNLL input (tokens in the first
        column, blank lines between sentences) keeps the training data's scheme; plain text
        (one whitespace-tokenised sentence a line) is answered in BIO (IOB2), what a reader
        expects. ``input_format`` is ``conll``, ``text`` or ``auto`` (judged from the first
        200 lines)."""
        if input_format not in ("auto", "conll", "text"):
            raise ValueError(f"unknown input format {input_format!r}")
        head = list(itertools.islice(lines, 200))
        numbered = enumerate(itertools.chain(head, lines), 1)
        if input_format == "auto":
            conll = looks_like_conll(head, self.config.data.tag_column, self.data_scheme)
        else:
            conll = input_format == "conll"
        if conll:
            return self._conll_sentences(numbered)
        return ((line.split(), "IOB2") for _, line in numbered)

    def _conll_sentences(self, numbered: Iterator[tuple[int, str]]
                         ) -> Iterator[tuple[list[str], str]]:
        """CoNLL input parsed a block of lines at a time (:func:`iter_conll`), so memory
        stays bounded on endless input; tags, if present, are ignored."""
        for part in iter_conll(numbered, "input", self.config.data.tag_column,
                               require_tags=False):
            yield from ((tokens, self.data_scheme) for tokens in part.tokens)

    def predict_records(self, items: list[tuple[list[str], str]]) -> list[dict[str, Any]]:
        """Tokens, tags in the item's scheme and entity spans (token offsets, end exclusive)."""
        found = self._predict_spans([tokens for tokens, _ in items])
        return [{"tokens": words, "tags": spans_to_tags(row, len(words), scheme),
                 "spans": _span_records(words, row)}
                for (words, scheme), row in zip(items, found)]

    def format_output(self, result: dict[str, Any], as_json: bool) -> str:
        """``token<TAB>tag`` lines and a blank line after the sentence, or one JSON object."""
        if as_json:
            return json.dumps(result, ensure_ascii=False)
        return "\n".join([*(f"{w}\t{t}" for w, t in zip(result["tokens"], result["tags"])),
                          ""])


def _span_records(words: list[str], spans: list[Span]) -> list[dict[str, Any]]:
    """Entities as ``{"text", "type", "start", "end"}`` (token offsets, end exclusive)."""
    return [{"text": " ".join(words[start:end]), "type": kind, "start": start, "end": end}
            for kind, start, end in spans]
