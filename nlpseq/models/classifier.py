"""Text classifier: recurrent encoder -> pooling -> dropout -> linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpseq.batching import TextBatch
from nlpseq.config import POOLINGS
from nlpseq.models.encoder import Dropout, RecurrentEncoder


class TextClassifier(nn.Module):
    """Binary or multi-class classifier over a (bi)RNN.

    Pooling: ``last`` (final states of both directions), ``max`` / ``mean`` over real tokens,
    ``attention`` (a learned query scores each token), ``max-mean`` (both, concatenated).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embedding_dim: int = 50,
        hidden_size: int = 128,
        cell: str = "lstm",
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.5,
        embedding_dropout: float = 0.0,
        pooling: str = "last",
        word_dropout: float = 0.0,
        adversarial: float = 0.0,
        unk_id: int = 1,
        pretrained: Tensor | None = None,
        freeze_embeddings: bool = False,
        fixed_vectors: Tensor | int | None = None,
        sparse_embedding: bool = False,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.encoder = RecurrentEncoder(
            vocab_size, embedding_dim, hidden_size, cell=cell, layers=layers,
            bidirectional=bidirectional, dropout=dropout, embedding_dropout=embedding_dropout,
            pretrained=pretrained, freeze_embeddings=freeze_embeddings,
            fixed_vectors=fixed_vectors, sparse_embedding=sparse_embedding,
        )
        size = self.encoder.output_size
        self.pooling = pooling
        self.word_dropout = word_dropout
        self.adversarial = adversarial
        self.unk_id = unk_id
        if pooling == "attention":
            self.attention = nn.Linear(size, 1)
        self.dropout = Dropout(dropout)
        self.output = nn.Linear(size * (2 if pooling == "max-mean" else 1), num_classes)

    def logits(self, ids: Tensor, lengths: Tensor, embedded: Tensor | None = None) -> Tensor:
        """``ids (B, T)``, ``lengths (B,)`` -> class scores ``(B, C)``; ``embedded (B, T, E)``
        replaces the looked-up word vectors when given."""
        outputs, final = self.encoder(ids, lengths, embedded=embedded)  # (B, T, D), (B, D)
        if self.pooling == "last":
            return self.output(self.dropout(final))
        mask = (torch.arange(ids.size(1), device=ids.device) < lengths.unsqueeze(1)).unsqueeze(-1)
        if self.pooling == "attention":
            scores = self.attention(outputs).masked_fill(~mask, float("-inf"))  # (B, T, 1)
            pooled = (scores.softmax(dim=1) * outputs).sum(dim=1)  # (B, D)
        else:
            mean = outputs.sum(dim=1) / lengths.clamp(min=1).unsqueeze(1).to(outputs.dtype)
            maximum = outputs.masked_fill(~mask, float("-inf")).amax(dim=1)  # (B, D)
            pooled = {"max": maximum, "mean": mean}.get(self.pooling)
            if pooled is None:
                pooled = torch.cat([maximum, mean], dim=-1)  # (B, 2D)
        return self.output(self.dropout(pooled))

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
