"""Named entity recognition: CoNLL column files -> BiRNN(-CRF) tagger -> entity F1.

Tags are read in the scheme the data is written in (``data.tag_scheme``, IOB1 for
CoNLL-2003), converted to the scheme the model trains in (``model.train_scheme``, BIOES by
default) and converted back for evaluation and prediction, so outputs are always in the
scheme of the input. Entity F1 is computed like conlleval (span and type must both match).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nlpseq.batching import bucket_batches
from nlpseq.checkpoint import atomic_path
from nlpseq.config import TokenizerConfig
from nlpseq.corpora import TaggedData, parse_conll, read_conll
from nlpseq.embeddings import pretrained_matrix
from nlpseq.errors import NlpseqError
from nlpseq.models.tagger import SequenceTagger, TaggerBatch, casing
from nlpseq.tagschemes import (
    SpanF1,
    allowed_transitions,
    convert_tags,
    scheme_tags,
    split_tag,
    tags_to_spans,
    validate_tag,
)
from nlpseq.tasks.base import Log, Task, shard, text_list
from nlpseq.tokenize import TextTokenizer
from nlpseq.vocab import LabelVocab

TOKENIZER = "tokenizer.json"
CHARS = "chars.json"
TAGS = "tags.json"
VECTORS = "vectors.safetensors"
VECTOR_WORDS = "vectors.json"

MAX_WORD_CHARS = 40  # longer tokens (URLs, ...) are cut for the character encoder
_DIGIT = re.compile(r"\d")


class TokenTable:
    """Sentences stored as flat ids of distinct token strings, with per-token-string features
    (word id, pretrained row, casing, characters) computed once per distinct string."""

    def __init__(
        self,
        sentences: Sequence[Sequence[str]],
        tags: Sequence[Sequence[int]] | None,
        featurize,
    ):
        types: dict[str, int] = {"": 0}  # type 0 is padding
        flat: list[int] = []
        for sentence in sentences:
            for token in sentence:
                flat.append(types.setdefault(token, len(types)))
        self.lengths = torch.tensor([len(s) for s in sentences], dtype=torch.long)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.flat = torch.tensor(flat, dtype=torch.long)
        self.tags = (
            torch.tensor([t for row in tags for t in row], dtype=torch.long)
            if tags is not None else None
        )
        self.type_features = featurize(list(types))

    def __len__(self) -> int:
        return len(self.lengths)

    def collate(self, indices: Sequence[int]) -> TaggerBatch:
        index = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[index]  # (B,)
        steps = torch.arange(int(lengths.max()))  # (T,)
        mask = steps.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        positions = (self.offsets[index].unsqueeze(1) + steps).clamp(max=len(self.flat) - 1)
        types = self.flat[positions].masked_fill(~mask, 0)  # (B, T)
        distinct, word_index = torch.unique(types, return_inverse=True)  # (U,), (B, T)
        features = self.type_features
        chars = features["chars"][distinct]  # (U, Lmax)
        chars = chars[:, : max(int(features["char_lengths"][distinct].max()), 1)]
        tags = None
        if self.tags is not None:
            tags = self.tags[positions].masked_fill(~mask, 0)
        return TaggerBatch(
            ids=features["ids"][types], lengths=lengths, mask=mask,
            casing=features["casing"][types], word_chars=chars, word_index=word_index,
            pretrained_ids=features["pretrained"][types] if "pretrained" in features else None,
            tags=tags,
        )


class NerTask(Task):
    """Tag each token of each sentence; entity precision, recall and F1 as conlleval."""

    name = "ner"
    metrics = {"f1": True, "precision": True, "recall": True, "accuracy": True}
    default_metric = "f1"

    def __init__(self, config):
        super().__init__(config)
        self.tokenizer: TextTokenizer | None = None
        self.char_tokenizer: TextTokenizer | None = None
        self.tags: LabelVocab | None = None
        self.vector_words: dict[str, int] | None = None  # frozen pretrained table rows
        self.vectors: torch.Tensor | None = None
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

    def _read(self, path: str, require_tags: bool = True) -> TaggedData:
        data = self.config.data
        if data.format != "conll":
            raise NlpseqError(f"the ner task reads CoNLL files (data.format: conll), not "
                              f"{data.format!r}", self.config.source)
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
        ids = self.tokenizer.encode_words([types[1:]])[0] if len(types) > 1 else []
        chars = self.char_tokenizer.encode_batch([t[:MAX_WORD_CHARS] for t in types[1:]])
        char_lengths = torch.tensor([0] + [len(c) for c in chars], dtype=torch.long)
        width = max(int(char_lengths.max()), 1)
        # one tensor from padded rows: far faster than filling row by row
        char_matrix = torch.tensor(
            [[0] * width] + [c + [0] * (width - len(c)) for c in chars], dtype=torch.long
        )
        features = {
            "ids": torch.tensor([0, *ids], dtype=torch.long),
            "casing": torch.tensor([0] + [casing(t) for t in types[1:]], dtype=torch.long),
            "chars": char_matrix,
            "char_lengths": char_lengths,
        }
        if self.vector_words is not None:
            features["pretrained"] = torch.tensor(
                [0] + [self._vector_row(t) for t in types[1:]], dtype=torch.long
            )
        return features

    def _vector_row(self, token: str) -> int:
        rows = self.vector_words
        row = rows.get(token)
        if row is None:
            lower = token.lower()
            row = rows.get(lower)
            if row is None:
                row = rows.get(_DIGIT.sub("0", lower), 0)
        return row

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
            self.tokenizer = TextTokenizer.train(
                (" ".join(s) for s in train.tokens), self.config.tokenizer
            )
            char_config = TokenizerConfig(kind="char", min_frequency=1, max_size=100000)
            self.char_tokenizer = TextTokenizer.train(
                (" ".join(s) for s in train.tokens), char_config
            )
            types = sorted({split_tag(t)[1] for s in train.tags for t in s if t != "O"})
            self.tags = LabelVocab(scheme_tags(types, self.train_scheme))
            if emb.path and self.config.model.frozen_vectors:
                self.vector_words, self.vectors = _vector_table(emb.path, emb.format,
                                                                emb.cache_dir, log)
        self.train_table = self._table(train)
        log(f"train: {len(train.tokens)} sentences, {int(self.train_table.lengths.sum())} tokens "
            f"from {train.path}; vocabulary {self.tokenizer.vocab_size} words, "
            f"{self.char_tokenizer.vocab_size} characters; tags {self.train_scheme} "
            f"({', '.join(self.entity_types)})")
        if data.dev:
            self.dev_data = self._read(data.dev)
            self.dev_table = self._table(self.dev_data)
            log(f"dev: {len(self.dev_data.tokens)} sentences from {self.dev_data.path}")

    def save_artifacts(self, directory: Path) -> None:
        with atomic_path(directory / TOKENIZER) as tmp:
            self.tokenizer.save(tmp)
        with atomic_path(directory / CHARS) as tmp:
            self.char_tokenizer.save(tmp)
        with atomic_path(directory / TAGS) as tmp:
            self.tags.save(tmp)
        if self.vectors is not None:
            from safetensors.torch import save_file

            words = [""] * len(self.vector_words)
            for word, row in self.vector_words.items():
                words[row] = word
            with atomic_path(directory / VECTOR_WORDS) as tmp:
                Path(tmp).write_text(json.dumps(words, ensure_ascii=False), encoding="utf-8")
            with atomic_path(directory / VECTORS) as tmp:
                save_file({"vectors": self.vectors.contiguous()}, tmp)

    def load_artifacts(self, directory: Path) -> None:
        self.tokenizer = TextTokenizer.load(directory / TOKENIZER)
        self.char_tokenizer = TextTokenizer.load(directory / CHARS)
        self.tags = LabelVocab.load(directory / TAGS)
        if (directory / VECTORS).is_file():
            from safetensors.torch import load_file

            try:
                self.vectors = load_file(str(directory / VECTORS))["vectors"]
                words = json.loads((directory / VECTOR_WORDS).read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError) as err:
                raise NlpseqError(f"cannot read pretrained vectors: {err}", directory) from None
            self.vector_words = {w: i for i, w in enumerate(words)}

    def build_model(self, log: Log, pretrained: bool = True) -> nn.Module:
        m, emb = self.config.model, self.config.embeddings
        matrix = None
        if pretrained and emb.path:
            matrix, _ = pretrained_matrix(
                emb.path, emb.format, self.tokenizer.vocabulary(), m.embedding_dim,
                cache_dir=emb.cache_dir, seed=self.config.train.seed, skip=4,
            )
        if m.frozen_vectors and emb.path and self.vectors is None:
            raise NlpseqError("model.frozen_vectors is set but the run has no vectors file",
                              self.config.source)
        constraints = allowed_transitions(self.tags.labels, self.train_scheme)
        return SequenceTagger(
            self.tokenizer.vocab_size, self.char_tokenizer.vocab_size, len(self.tags),
            embedding_dim=m.embedding_dim, hidden_size=m.hidden_size, cell=m.cell,
            layers=m.layers, bidirectional=m.bidirectional, dropout=m.dropout,
            embedding_dropout=m.embedding_dropout, word_dropout=m.word_dropout,
            char_encoder=m.char_encoder, char_embedding_dim=m.char_embedding_dim,
            char_hidden_size=m.char_hidden_size, char_kernel_size=m.char_kernel_size,
            casing_dim=m.casing_dim, output=m.output, constraints=constraints,
            pretrained=matrix, freeze_embeddings=emb.freeze and matrix is not None,
            frozen_vectors=self.vectors if m.frozen_vectors else None,
            sparse_embedding=emb.lazy_updates,
        )

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[TaggerBatch]:
        t = self.config.train
        order = bucket_batches(
            self.train_table.lengths.tolist(), t.batch_size, seed=t.seed * 1000 + epoch,
            pool=t.bucket_pool,
        )
        return [self.train_table.collate(b) for b in shard(order, rank, world_size)]

    # --- decoding and scoring -------------------------------------------------------------
    @torch.no_grad()
    def _decode(self, model: nn.Module, table: TokenTable) -> list[list[str]]:
        """Predicted tags of every sentence of ``table``, in the data scheme, input order."""
        model.eval()
        out: list[list[str]] = [[] for _ in range(len(table))]
        for indices in bucket_batches(
            table.lengths.tolist(), self.config.eval.batch_size, shuffle=False
        ):
            batch = table.collate(indices).to(self.device)
            for index, path in zip(indices, model.decode(batch)):
                tags = [self.tags.labels[i] for i in path]
                out[index] = convert_tags(tags, self.train_scheme, self.data_scheme)
        return out

    def _scores(self, model: nn.Module, data: TaggedData, table: TokenTable) -> dict[str, Any]:
        predicted = self._decode(model, table)
        metric = SpanF1()
        for gold, guess in zip(data.tags, predicted):
            metric.add(gold, guess, self.data_scheme)
        result = metric.result()
        result["n_sentences"] = len(predicted)
        return result

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        if self.dev_table is None:
            raise NlpseqError("no dev data: set data.dev", self.config.source)
        return self._scores(model, self.dev_data, self.dev_table)

    def evaluate_files(self, paths: list[str]) -> dict[str, Any]:
        if not paths:
            raise NlpseqError("give at least one CoNLL file to evaluate")
        files = [self._read(p) for p in paths]
        for file in files:  # before merging, so that an error names its file and line
            self._check_gold_types(file)
        data = TaggedData(
            [s for f in files for s in f.tokens], [t for f in files for t in f.tags],
            [n for f in files for n in f.lines], ", ".join(f.path for f in files),
        )
        return self._scores(self.model, data, self._table(data, with_tags=False))

    # --- prediction --------------------------------------------------------------------------
    def predict(
        self, sentences: Sequence[str | Sequence[str]], spans: bool = False
    ) -> list[list[str]] | list[list[dict[str, Any]]]:
        """Tags (in the data's scheme) for each sentence, or with ``spans`` its entities as
        ``{"type", "start", "end", "text"}`` (end exclusive). A sentence is a list of tokens
        or a string split on whitespace."""
        tokens = [s.split() if isinstance(s, str) else list(s)
                  for s in text_list(sentences, "predict")]
        tags = self._predict_tokens(tokens)
        if not spans:
            return tags
        return [
            [
                {"type": kind, "start": start, "end": end, "text": " ".join(words[start:end])}
                for kind, start, end in tags_to_spans(row, self.data_scheme)
            ]
            for words, row in zip(tokens, tags)
        ]

    def _predict_tokens(self, tokens: list[list[str]]) -> list[list[str]]:
        present = [i for i, s in enumerate(tokens) if s]
        out: list[list[str]] = [[] for _ in tokens]
        if present:
            data = TaggedData([tokens[i] for i in present], None, present, "<input>")
            for i, row in zip(present, self._decode(self.model, self._table(data, False))):
                out[i] = row
        return out

    def predict_lines(
        self, lines: Iterable[str], as_json: bool = False, input_format: str = "auto"
    ) -> Iterator[str]:
        """CoNLL input (tokens in the first column, blank lines between sentences) or plain
        text (one whitespace-tokenised sentence a line) -> ``token<TAB>tag`` lines with a
        blank line after each sentence (``as_json``: one JSON object per sentence).
        ``input_format`` is ``conll``, ``text`` or ``auto`` (judged from the first 200 lines)."""
        if input_format not in ("auto", "conll", "text"):
            raise ValueError(f"unknown input format {input_format!r}")
        lines = iter(lines)
        head = []
        for line in lines:
            head.append(line)
            if len(head) >= 200:
                break
        numbered = enumerate(_chain(head, lines), 1)
        if input_format == "auto":
            conll = _looks_like_conll(head, self.config.data.tag_column, self.data_scheme)
        else:
            conll = input_format == "conll"
        if conll:
            # Column counts are checked as in training data; tags, if present, are ignored.
            data = parse_conll(numbered, "input", self.config.data.tag_column,
                               require_tags=False)
            sentences: Iterable[list[str]] = data.tokens
        else:
            sentences = (line.split() for _, line in numbered)
        chunk: list[list[str]] = []
        for sentence in _iter_or_none(sentences):
            if sentence is not None:
                chunk.append(sentence)
            if chunk and (sentence is None or len(chunk) == 1024):
                for words, tags in zip(chunk, self._predict_tokens(chunk)):
                    if as_json:
                        yield json.dumps({
                            "tokens": words, "tags": tags,
                            "spans": [list(s) for s in tags_to_spans(tags, self.data_scheme)],
                        })
                    else:
                        yield from (f"{w}\t{t}" for w, t in zip(words, tags))
                        yield ""
                chunk = []


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


def _iter_or_none(items: Iterable[Any]) -> Iterator[Any]:
    yield from items
    yield None


def _looks_like_conll(head: list[str], tag_column: int, scheme: str) -> bool:
    """CoNLL when the input starts with ``-DOCSTART-``, or its first sentence is one token a
    line with a tag column, or it is one token a line with blank lines between sentences."""
    block = []
    for line in head:
        if not line.strip():
            if block:
                break
            continue
        block.append(line.split())
    if not block:
        return False
    if block[0][0] == "-DOCSTART-":
        return True
    widths = {len(fields) for fields in block}
    if widths == {1}:
        return len(block) < len([line for line in head if line.strip()])
    if len(widths) != 1 or len(block) < 2:
        return False
    width = widths.pop()
    column = tag_column if tag_column >= 0 else width + tag_column
    if not 1 <= column < width:
        return False
    try:
        for fields in block:
            validate_tag(fields[column], scheme)
    except ValueError:
        return False
    return True


def _vector_table(path: str, fmt: str, cache_dir: str, log: Log) -> tuple[dict[str, int], Any]:
    """The whole pretrained table (row 0 is a zero vector for words without one), cached."""
    from safetensors.torch import load_file, save_file

    from nlpseq.embeddings import load_vectors

    cache = None
    file = Path(path).expanduser()
    if cache_dir and file.is_file():
        stat = file.stat()
        key = hashlib.sha256(f"{file.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}\n{fmt}"
                             .encode()).hexdigest()[:24]
        cache = Path(cache_dir).expanduser() / f"table-{key}"
        if (cache.with_suffix(".json")).is_file() and cache.with_suffix(".safetensors").is_file():
            words = json.loads(cache.with_suffix(".json").read_text(encoding="utf-8"))
            vectors = load_file(str(cache.with_suffix(".safetensors")))["vectors"]
            log(f"pretrained table: {len(words) - 1} vectors (cached)")
            return {w: i for i, w in enumerate(words)}, vectors
    keyed = load_vectors(path, fmt)
    words = ["<none>", *keyed.index_to_key]
    vectors = torch.cat([torch.zeros(1, keyed.vector_size),
                         torch.from_numpy(keyed.vectors.astype("float32"))])
    log(f"pretrained table: {len(words) - 1} vectors of dimension {keyed.vector_size}")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache.with_suffix(".safetensors")) as tmp:
            save_file({"vectors": vectors.contiguous()}, tmp)
        with atomic_path(cache.with_suffix(".json")) as tmp:
            Path(tmp).write_text(json.dumps(words, ensure_ascii=False), encoding="utf-8")
    return {w: i for i, w in enumerate(words)}, vectors
