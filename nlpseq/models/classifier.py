"""Text classifier: recurrent encoder -> pooling -> dropout -> linear."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpseq.batching import TextBatch
from nlpseq.config import POOLINGS, Pooling, key
from nlpseq.models.encoder import Cell, Dropout, RecurrentEncoder, masked_max
from nlpseq.tokenize import UNK


@dataclass(frozen=True)
class ClassifierConfig:
    """BiRNN text classifier (the ``model`` section of sentiment pipelines)."""

    cell: Cell = key("lstm", help="recurrent cell")
    embedding_dim: int = key(50, low=1, help="word embedding size")
    hidden_size: int = key(128, low=1, help="units per direction of each recurrent layer")
    layers: int = key(1, low=1, help="stacked recurrent layers")
    bidirectional: bool = key(True, help="also read each text right to left")
    dropout: float = key(0.5, low=0, high=1, high_open=True,
                         help="dropout between layers and before the output layer")
    embedding_dropout: float = key(0.0, low=0, high=1, high_open=True,
                                   help="dropout on the word vectors")
    pooling: Pooling = key("last", help="how token states become one text vector")
    word_dropout: float = key(0.0, low=0, high=1, high_open=True,
                              help="training: replace this fraction of tokens by <unk>")
    adversarial: float = key(0.0, low=0, help="training: also train on word vectors moved by "
                             "this L2 norm per text towards a higher loss (0 = off)")
    chunk_length: int = key(0, low=0, help="read longer texts as chunks of this many tokens, "
                            "side by side, pooled together (0 = whole texts; not with "
                            "pooling last)")
    ngram_buckets: int = key(0, low=0, help="also score hashed word n-grams linearly, in a table "
                             "of this many rows (0 = off; rows trained lazily with "
                             "embeddings.lazy_updates)")
    ngram_order: int = key(2, low=1, help="longest n-gram the n-gram table scores")


class TextClassifier(nn.Module):
    """Binary or multi-class classifier over a (bi)RNN.

    Pooling: ``last`` (final states of both directions), ``max`` / ``mean`` over real tokens,
    ``attention`` (a learned query scores each token), ``max-mean`` (both, concatenated).
    With ``adversarial`` > 0, training also adds the loss at word vectors moved in the
    direction that raises it most (Miyato et al., 2017), which costs about 2.5x per step.
    ``fixed_vectors`` (F, E) are pretrained vectors of words never seen in training, looked
    up by ids >= ``vocab_size`` (not weights: see :mod:`nlpseq.embeddings`).

    ``chunk_length`` > 0 cuts longer texts into chunks that the encoder reads as separate rows
    of one batch, then pools over all of a text's token states: a long review costs chunk-length
    sequential steps instead of its own length, and context stops at chunk boundaries.
    ``ngram_buckets`` > 0 adds a linear bag of hashed 1..``ngram_order``-grams to the class
    scores (fastText, Joulin et al. 2017; the sum of their rows over the square root of their
    count); rows start at zero, so n-grams never seen in training add nothing.
    """

    def __init__(
        self,
        config: ClassifierConfig,
        vocab_size: int,
        num_classes: int,
        *,
        unk_id: int = UNK,
        pretrained: Tensor | None = None,
        freeze_embeddings: bool = False,
        fixed_vectors: Tensor | None = None,
        sparse_embedding: bool = False,
    ):
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {config.pooling!r}; expected one of {POOLINGS}")
        if config.chunk_length and config.pooling == "last":
            raise ValueError("model.chunk_length needs a pooling over tokens, not last")
        self.config = config
        self.encoder = RecurrentEncoder(
            vocab_size, config.embedding_dim, config.hidden_size, cell=config.cell,
            layers=config.layers, bidirectional=config.bidirectional, dropout=config.dropout,
            embedding_dropout=config.embedding_dropout, pretrained=pretrained,
            freeze_embeddings=freeze_embeddings, fixed_vectors=fixed_vectors,
            sparse_embedding=sparse_embedding,
        )
        size = self.encoder.output_size
        self.pooling = config.pooling
        self.word_dropout = config.word_dropout
        self.adversarial = config.adversarial
        self.unk_id = unk_id
        if config.pooling == "attention":
            self.attention = nn.Linear(size, 1)
        self.dropout = Dropout(config.dropout)
        self.output = nn.Linear(size * (2 if config.pooling == "max-mean" else 1), num_classes)
        self.chunk_length = config.chunk_length
        self.ngram_order = config.ngram_order
        if config.ngram_buckets:
            self.ngrams = nn.Embedding(config.ngram_buckets, num_classes, sparse=sparse_embedding)
            nn.init.zeros_(self.ngrams.weight)

    def logits(self, ids: Tensor, lengths: Tensor, embedded: Tensor | None = None) -> Tensor:
        """``ids (B, T)``, ``lengths (B,)`` -> class scores ``(B, C)``; ``embedded (B, T, E)``
        replaces the looked-up word vectors when given."""
        bag = self._ngram_scores(ids, lengths) if hasattr(self, "ngrams") else 0
        if self.chunk_length:  # also for short texts: one graph whatever the length (export)
            outputs, final = self._encode_chunks(ids, lengths, embedded), None
        else:
            outputs, final = self.encoder(ids, lengths, embedded=embedded)  # (B, T, D), (B, D)
        if self.pooling == "last":
            return self.output(self.dropout(final)) + bag
        steps = torch.arange(outputs.size(1), device=ids.device)
        mask = (steps < lengths.unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
        if self.pooling == "attention":
            scores = self.attention(outputs).masked_fill(~mask, float("-inf"))  # (B, T, 1)
            pooled = (scores.softmax(dim=1) * outputs).sum(dim=1)  # (B, D)
        else:
            mean = outputs.sum(dim=1) / lengths.clamp(min=1).unsqueeze(1).to(outputs.dtype)
            maximum = masked_max(outputs, mask)  # (B, D)
            pooled = {"max": maximum, "mean": mean}.get(self.pooling)
            if pooled is None:
                pooled = torch.cat([maximum, mean], dim=-1)  # (B, 2D)
        return self.output(self.dropout(pooled)) + bag

    def _encode_chunks(self, ids: Tensor, lengths: Tensor, embedded: Tensor | None) -> Tensor:
        """Token states ``(B, K * L, D)`` of texts read as K chunks of L tokens each, the
        chunks of all texts side by side in one encoder batch; zeros past each text's end.

        Written with shape-generic operations only (no Python arithmetic on sizes), so that
        an exported graph chunks texts of any length."""
        batch, size = ids.size(0), self.chunk_length
        extra = (-ids.size(1)) % size  # padding up to whole chunks: ceil(T / L) of them
        ids = F.pad(ids, (0, extra)).reshape(batch, -1, size)  # (B, K, L)
        lengths = lengths.to(ids.device)
        starts = torch.arange(ids.size(1), device=ids.device) * size  # (K,)
        chunk_lengths = (lengths.unsqueeze(1) - starts).clamp(0, size)  # (B, K)
        if embedded is not None:  # (B, T, E) -> (B*K, L, E)
            embedded = F.pad(embedded, (0, 0, 0, extra)).reshape(-1, size, embedded.size(2))
        # A chunk past a text's end is read as one padding token and masked below: cheaper
        # than gathering the used chunks, since length bucketing leaves few of them.
        outputs, _ = self.encoder(ids.reshape(-1, size), chunk_lengths.reshape(-1).clamp(min=1),
                                  embedded=embedded)  # (B*K, L, D)
        outputs = outputs.reshape(batch, -1, outputs.size(-1))  # (B, K*L, D)
        real = torch.arange(outputs.size(1), device=ids.device) < lengths.unsqueeze(1)
        return outputs * real.unsqueeze(-1).to(outputs.dtype)

    def _ngram_scores(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Class scores ``(B, C)`` of the hashed n-grams of each text."""
        steps = torch.arange(ids.size(1), device=ids.device)
        hashed, rows, counts = ids, [], 0
        for n in range(1, self.ngram_order + 1):
            if n > 1:  # the n-gram ending at position i + n - 1, hashed below 2^31
                hashed = (hashed[:, :-1] * 1_000_003 + ids[:, n - 1 :]) % 2_147_483_647
            real = (steps[: hashed.size(1)] + n <= lengths.unsqueeze(1)).unsqueeze(-1)
            vectors = self.ngrams(hashed % self.ngrams.num_embeddings)  # (B, T - n + 1, C)
            rows.append((vectors * real).sum(dim=1))
            counts = counts + real.sum(dim=1)
        return sum(rows) / counts.clamp(min=1).sqrt()

    def forward(self, batch: TextBatch, carry: None = None) -> tuple[Tensor, int, None]:
        """Summed cross-entropy over the batch and the number of examples (in training with
        ``adversarial`` > 0, plus the loss on adversarially perturbed word vectors)."""
        ids = batch.ids
        if self.training and self.word_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.word_dropout
            ids = ids.masked_fill(drop & batch.mask, self.unk_id)
        embedded = self.encoder.embed(ids)  # (B, T, E)
        adversarial = self.training and self.adversarial > 0
        if adversarial and not embedded.requires_grad:
            embedded = embedded.detach().requires_grad_()  # frozen: still need d loss / d vectors
        loss = self._loss(ids, batch, embedded)
        if adversarial:
            (grad,) = torch.autograd.grad(loss, embedded, retain_graph=True)  # (B, T, E)
            grad = grad * batch.mask.unsqueeze(-1).to(grad.dtype)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]  # (B, 1, 1)
            shift = (self.adversarial * grad / norm).detach()
            loss = loss + self._loss(ids, batch, embedded + shift)
        return loss, len(ids), None

    def _loss(self, ids: Tensor, batch: TextBatch, embedded: Tensor) -> Tensor:
        logits = self.logits(ids, batch.lengths, embedded)
        return F.cross_entropy(logits.float(), batch.labels, reduction="sum")
