"""Sequence tagger: word + character + casing features -> BiRNN -> softmax or CRF.

Each token is represented by
- its word embedding (lowercased training vocabulary, initialised from pretrained vectors;
  words never seen in training look up fixed pretrained rows, see :mod:`nlpseq.embeddings`),
- a character encoding of the word as written (char CNN with max-pooling, or char BiLSTM),
  computed once per distinct word of the batch,
- a small casing embedding (GloVe is lowercase; the casing feature gives back capitals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpseq.batching import Batch
from nlpseq.config import key
from nlpseq.models.crf import LinearChainCRF
from nlpseq.models.encoder import Cell, Dropout, RecurrentEncoder, masked_max
from nlpseq.tokenize import UNK

Scheme = Literal["iob1", "iob2", "bioes"]


@dataclass(frozen=True)
class TaggerConfig:
    """BiRNN tagger with character features and a softmax or CRF output layer (the ``model``
    section of ner pipelines)."""

    cell: Cell = key("lstm", help="recurrent cell")
    embedding_dim: int = key(50, low=1, help="word embedding size")
    hidden_size: int = key(200, low=1, help="units per direction of each recurrent layer")
    layers: int = key(1, low=1, help="stacked recurrent layers")
    bidirectional: bool = key(True, help="also read each sentence right to left")
    dropout: float = key(0.5, low=0, high=1, high_open=True,
                         help="dropout between layers and before the output layer")
    embedding_dropout: float = key(0.0, low=0, high=1, high_open=True,
                                   help="dropout on the concatenated token features")
    char_encoder: Literal["cnn", "lstm", "none"] = key("cnn", help="character features")
    char_embedding_dim: int = key(30, low=1, help="character embedding size")
    char_hidden_size: int = key(50, low=1, help="char CNN filters or char LSTM units")
    char_kernel_size: int = key(3, low=1, help="char CNN window (odd)")
    casing_dim: int = key(8, low=0, help="casing feature size (0 = none)")
    output: Literal["crf", "softmax"] = key("crf", help="output layer")
    train_scheme: Scheme = key("bioes", help="tag scheme the model predicts in")
    word_dropout: float = key(0.0, low=0, high=1, high_open=True,
                              help="training: replace known words by <unk> with this probability")
    frozen_vectors: bool = key(True, help="every word of the vectors file outside the "
                               "training vocabulary keeps its vector, fixed (needs "
                               "embeddings.path; as embeddings.extend_vocab over the whole file)")


#: casing classes of a token as written; 0 is padding
CASINGS = ("<pad>", "numeric", "mainly_numeric", "lower", "upper", "title", "has_digit", "other")


def casing(token: str) -> int:
    """Casing class id of a token (see :data:`CASINGS`)."""
    # no letter is also a digit (checked over all of Unicode in the tests): a word of
    # letters skips the count
    digits = 0 if token.isalpha() else sum(c.isdigit() for c in token)
    if token.isdigit():
        return 1
    if digits / max(len(token), 1) > 0.5:
        return 2
    if token.islower():
        return 3
    if token.isupper():
        return 4
    if token[:1].isupper():
        return 5
    if digits:
        return 6
    return 7


@dataclass
class TaggerBatch(Batch):
    """Padded sentences. Character ids are stored once per distinct word of the batch."""

    ids: Tensor  # (B, T) word ids, 0 at padding
    lengths: Tensor  # (B,) long
    mask: Tensor  # (B, T) bool, True at real tokens
    casing: Tensor  # (B, T) casing class ids
    word_chars: Tensor  # (U, L) character ids of the batch's distinct words, 0-padded
    word_index: Tensor  # (B, T) row of word_chars for each token
    tags: Tensor | None = None  # (B, T) gold tag ids, 0 at padding

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


class CharCNN(nn.Module):
    """Character embeddings -> one convolution -> max over the word's characters."""

    def __init__(self, num_chars: int, embedding_dim: int, filters: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("char_kernel_size must be odd")
        self.embedding = nn.Embedding(num_chars, embedding_dim, padding_idx=0)
        self.kernel_size = kernel_size
        # A convolution written as unfold + one matrix product: several times faster on CPU
        # than Conv1d for so few channels, forward and backward.
        self.window = nn.Linear(embedding_dim * kernel_size, filters)
        self.output_size = filters

    def forward(self, chars: Tensor) -> Tensor:
        """``chars (U, L)`` -> ``(U, F)``."""
        half = self.kernel_size // 2
        x = F.pad(self.embedding(chars), (0, 0, half, half))  # (U, L + k - 1, C)
        windows = x.unfold(1, self.kernel_size, 1)  # (U, L, C, k)
        h = self.window(windows.flatten(2))  # (U, L, F)
        h = masked_max(h, (chars != 0).unsqueeze(2))  # (U, F)
        return h.masked_fill(torch.isinf(h), 0.0)  # the padding word has no characters


class CharBiRNN(nn.Module):
    """Character embeddings -> BiLSTM; last forward state + first backward state."""

    def __init__(self, num_chars: int, embedding_dim: int, hidden_size: int):
        super().__init__()
        self.encoder = RecurrentEncoder(num_chars, embedding_dim, hidden_size, cell="lstm")
        self.output_size = self.encoder.output_size

    def forward(self, chars: Tensor) -> Tensor:
        """``chars (U, L)`` -> ``(U, 2H)``."""
        lengths = (chars != 0).sum(dim=1)
        _, final = self.encoder(chars, lengths.clamp(min=1))  # (U, 2H)
        return final * (lengths > 0).unsqueeze(1)


def _char_encoder(config: TaggerConfig, num_chars: int) -> CharCNN | CharBiRNN | None:
    """The character feature module ``config.char_encoder`` names (None for ``none``)."""
    if config.char_encoder == "cnn":
        return CharCNN(num_chars, config.char_embedding_dim, config.char_hidden_size,
                       config.char_kernel_size)
    if config.char_encoder == "lstm":
        return CharBiRNN(num_chars, config.char_embedding_dim, config.char_hidden_size)
    if config.char_encoder == "none":
        return None
    raise ValueError(f"unknown char_encoder {config.char_encoder!r}; expected cnn, lstm or none")


class SequenceTagger(nn.Module):
    """BiRNN tagger with character and casing features and a softmax or CRF output."""

    def __init__(
        self,
        config: TaggerConfig,
        vocab_size: int,
        num_chars: int,
        num_tags: int,
        *,
        constraints: tuple[Tensor, Tensor, Tensor] | None = None,
        pretrained: Tensor | None = None,
        freeze_embeddings: bool = False,
        fixed_vectors: Tensor | None = None,
        sparse_embedding: bool = False,
    ):
        """``constraints``: the CRF's allowed (start, transition, end) masks;
        ``fixed_vectors`` (F, E): the rows of word ids >= ``vocab_size`` (not trained)."""
        super().__init__()
        c = config
        if c.output not in ("crf", "softmax"):
            raise ValueError(f"unknown output {c.output!r}; expected crf or softmax")
        self.config = config
        self.word_dropout = c.word_dropout
        self.chars = _char_encoder(c, num_chars)
        self.casing = nn.Embedding(len(CASINGS), c.casing_dim, padding_idx=0) \
            if c.casing_dim else None
        extra_dim = (self.chars.output_size if self.chars is not None else 0) + c.casing_dim
        self.encoder = RecurrentEncoder(
            vocab_size, c.embedding_dim, c.hidden_size, cell=c.cell, layers=c.layers,
            bidirectional=c.bidirectional, dropout=c.dropout,
            embedding_dropout=c.embedding_dropout, pretrained=pretrained,
            freeze_embeddings=freeze_embeddings, extra_dim=extra_dim,
            fixed_vectors=fixed_vectors, sparse_embedding=sparse_embedding,
        )
        self.dropout = Dropout(c.dropout)
        self.output = nn.Linear(self.encoder.output_size, num_tags)
        self.crf = LinearChainCRF(num_tags, *(constraints or ())) if c.output == "crf" else None

    def emissions(self, batch: TaggerBatch) -> Tensor:
        """Tag scores ``(B, T, K)`` of every token."""
        features = []
        if self.chars is not None:
            per_word = self.chars(batch.word_chars)  # (U, F)
            features.append(per_word[batch.word_index])  # (B, T, F)
        if self.casing is not None:
            features.append(self.casing(batch.casing))  # (B, T, C)
        extra = torch.cat(features, dim=-1) if features else None
        ids = batch.ids
        if self.training and self.word_dropout > 0:
            # Replacing known words by <unk> trains the <unk> row and the reliance on
            # characters and pretrained vectors that unseen words need.
            drop = torch.rand(ids.shape, device=ids.device) < self.word_dropout
            ids = ids.masked_fill(drop & batch.mask, UNK)
        outputs, _ = self.encoder(ids, batch.lengths, extra)  # (B, T, D)
        return self.output(self.dropout(outputs))  # (B, T, K)

    def forward(self, batch: TaggerBatch, carry: None = None) -> tuple[Tensor, int, None]:
        """Summed loss over the batch (CRF: sentence NLLs; softmax: token cross-entropies)
        and the number of tokens."""
        scores = self.emissions(batch).float()
        if self.crf is not None:
            loss = self.crf.nll(scores, batch.tags, batch.mask).sum()
        else:
            loss = F.cross_entropy(scores[batch.mask], batch.tags[batch.mask], reduction="sum")
        return loss, batch.num_tokens, None

    @torch.no_grad()
    def decode(self, batch: TaggerBatch) -> list[list[int]]:
        """Best tag ids of each sentence (Viterbi with a CRF, else per-token argmax)."""
        scores = self.emissions(batch).float()
        if self.crf is not None:
            return self.crf.viterbi(scores, batch.mask)
        best = scores.argmax(dim=-1).tolist()
        return [row[:n] for row, n in zip(best, batch.lengths.tolist())]
