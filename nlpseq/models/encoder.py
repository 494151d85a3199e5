"""Shared recurrent encoder: embedding -> stacked (bi)directional RNN/LSTM/GRU.

Padding never leaks into the states. The backward direction of each bidirectional layer runs
a unidirectional RNN over each sequence reversed *within its own length*, so it starts at the
real last token; padding then sits after the real tokens, where it can only affect outputs at
padded positions, which are masked by every consumer. This keeps the fast padded (oneDNN)
kernels on CPU, which packed sequences do not use. On CPU, LSTM layers run on nlpseq's native
kernel instead where it is available (:mod:`nlpseq.native`: same results, both directions at
once on separate cores).
"""

from __future__ import annotations

import typing
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpseq import native

Cell = Literal["rnn", "lstm", "gru"]
#: recurrent cell name -> torch module (the names of :data:`Cell`)
CELLS: dict[str, type[nn.RNNBase]] = dict(
    zip(typing.get_args(Cell), (nn.RNN, nn.LSTM, nn.GRU), strict=True)
)


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of ``x`` (B, T, ...) within its length; padding stays at the end."""
    batch, steps = x.shape[:2]
    positions = torch.arange(steps, device=x.device).unsqueeze(0)  # (1, T)
    lengths = lengths.to(x.device).unsqueeze(1)  # (B, 1)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)  # (B, T)
    index = index.view(batch, steps, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def length_mask(lengths: Tensor, steps: int) -> Tensor:
    """(B,) lengths -> (B, T) bool mask, True at real tokens."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_max(x: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Largest value of ``x`` along ``dim`` among the positions where ``mask`` (broadcast to
    ``x``) is True; -inf where there are none. Adds a 0 / -inf bias: on CPU, masked_fill with
    a mask broadcast over the features costs several times the addition."""
    return (x + torch.where(mask, 0.0, float("-inf")).to(x.dtype)).amax(dim=dim)


def _run_direction(rnn: nn.RNNBase, x: Tensor, reverse: bool) -> Tensor:
    """Run one direction of a one-layer (bidirectional) ``rnn`` over ``x`` (B, T, In).

    Calls the same fused kernel ``rnn.forward`` uses, with that direction's weights only.
    """
    suffix = "_reverse" if reverse else ""
    weights = [getattr(rnn, f"{name}_l0{suffix}") for name in
               ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    h0 = x.new_zeros(1, x.size(0), rnn.hidden_size)
    if isinstance(rnn, nn.LSTM):
        return torch._VF.lstm(x, (h0, h0), weights, True, 1, 0.0, rnn.training, False, True)[0]
    if isinstance(rnn, nn.GRU):
        return torch._VF.gru(x, h0, weights, True, 1, 0.0, rnn.training, False, True)[0]
    return torch._VF.rnn_tanh(x, h0, weights, True, 1, 0.0, rnn.training, False, True)[0]


class Dropout(nn.Module):
    """``nn.Dropout`` with its CPU mask drawn 16 random bits per element in bulk.

    On CPU, torch draws dropout masks one double at a time (``bernoulli_``, about 25 ns per
    element on these machines), which made dropout a visible share of a training step. The
    mask comes from nlpseq's native kernel (:func:`nlpseq.native.dropout_mask`) or, where that
    is unavailable, from numpy's bulk bytes. The seed is drawn from torch's generator, so
    ``torch.manual_seed`` still fixes the masks. ``p`` is rounded to a multiple of 1/65536 and
    the kept values scaled by the exact inverse of the rounded keep rate, so the layer stays
    unbiased. Other devices use torch's own fused kernel.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        drop = round(self.p * 65536)  # of the 65536 equally likely draws, this many drop
        if x.device.type != "cpu" or drop == 65536:  # p rounds to 1: nothing is kept
            return F.dropout(x, self.p, True)
        seed = int(torch.randint(2**62, ()))
        if x.dtype == torch.float32 and native.load():
            return x * native.dropout_mask(x, self.p, seed)
        bits = bytearray(np.random.default_rng(seed).bytes(2 * x.numel()))
        draws = torch.frombuffer(bits, dtype=torch.int16).view(x.shape)  # uniform -2^15..2^15-1
        keep = (draws >= drop - 32768).to(x.dtype)
        return x * keep.mul_(65536 / (65536 - drop))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RecurrentEncoder(nn.Module):
    """Embed token ids and run a stacked recurrent network over them.

    ``forward(ids (B,T), lengths (B,), extra (B,T,E2) | None)`` returns ``outputs (B,T,D)`` with
    zeros at padded positions and ``final (B,D)``: the forward direction's state at each
    sequence's last real token concatenated with the backward direction's state at its first.
    When every sequence in a batch has the same length (length bucketing makes that common)
    a bidirectional layer runs as one fused call.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        *,
        cell: str = "lstm",
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        padding_idx: int = 0,
        pretrained: Tensor | None = None,
        freeze_embeddings: bool = False,
        extra_dim: int = 0,
        fixed_vectors: Tensor | None = None,
        sparse_embedding: bool = False,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(CELLS)}")
        # sparse: the table's gradient holds only the rows a batch used, which nlpseq's Adam
        # updates lazily (nlpseq.optim); the weights and checkpoints are the same either way.
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx,
                                      sparse=sparse_embedding)
        if pretrained is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(pretrained)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        # Ids >= vocab_size look up fixed (untrained) pretrained vectors: words never seen in
        # training. They are not weights: the run directory stores them once
        # (nlpseq.embeddings.save_fixed_vectors), so every weights file stays small.
        self.vocab_size = vocab_size
        self.register_buffer(
            "fixed_vectors", fixed_vectors if fixed_vectors is not None and
            len(fixed_vectors) else None, persistent=False,
        )
        self.cell = cell
        self.bidirectional = bidirectional
        self.hidden_size = hidden_size
        self.embedding_dropout = Dropout(embedding_dropout)
        self.dropout = Dropout(dropout)
        directions = 2 if bidirectional else 1
        input_size = embedding_dim + extra_dim
        self.layers = nn.ModuleList(
            CELLS[cell](
                input_size if layer == 0 else hidden_size * directions, hidden_size,
                batch_first=True, bidirectional=bidirectional,
            )
            for layer in range(layers)
        )
        self.output_size = hidden_size * directions

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids (B, T) -> vectors (B, T, E), trained or fixed."""
        if self.fixed_vectors is None:
            return self.embedding(ids)
        fixed = ids >= self.vocab_size  # (B, T)
        x = self.embedding(ids.masked_fill(fixed, 0))
        rows = nn.functional.embedding((ids - self.vocab_size).clamp(min=0), self.fixed_vectors)
        return torch.where(fixed.unsqueeze(-1), rows, x)

    def forward(
        self, ids: Tensor, lengths: Tensor, extra: Tensor | None = None,
        embedded: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``embedded`` (B, T, E), when given, replaces ``self.embed(ids)``."""
        lengths = lengths.to(ids.device)
        steps = ids.size(1)
        ragged: bool | None = None  # whether any row is padded; found when first needed
        x = self.embed(ids) if embedded is None else embedded  # (B, T, E)
        if extra is not None:
            x = torch.cat([x, extra], dim=-1)  # (B, T, E + E2)
        x = self.embedding_dropout(x)
        final = None
        for index, rnn in enumerate(self.layers):
            if index > 0:
                x = self.dropout(x)
            if getattr(rnn, "runs_padded", False):  # takes lengths (nlpseq.backends, int8)
                x, final = rnn(x, lengths), None  # (B, T, D), zeros at padding
                continue
            if native.usable(rnn, x):
                x, final = native.lstm_layer(rnn, x, lengths)  # (B, T, D), (B, D)
                continue
            final = None
            if ragged is None:
                ragged = bool((lengths != steps).any())
            if not ragged or not self.bidirectional:
                # Forward direction only sees padding after the real tokens: safe.
                x, _ = rnn(x)  # (B, T, D)
            else:
                forward = _run_direction(rnn, x, reverse=False)  # (B, T, H)
                backward = _run_direction(rnn, reverse_padded(x, lengths), reverse=True)
                x = torch.cat([forward, reverse_padded(backward, lengths)], dim=-1)  # (B, T, 2H)
            if ragged:
                x = x * length_mask(lengths, steps).unsqueeze(-1).to(x.dtype)
        if final is not None:
            return x, final
        last = (lengths - 1).clamp(min=0)
        final = x[torch.arange(x.size(0), device=x.device), last, : self.hidden_size]  # (B, H)
        if self.bidirectional:
            final = torch.cat([final, x[:, 0, self.hidden_size :]], dim=-1)  # (B, 2H)
        return x, final
