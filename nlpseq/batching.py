"""Pad and batch: length-bucketed batches so padding stays small, collated batch-first."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor


def bucket_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    pool: int = 50,
    max_tokens: int = 0,
) -> list[list[int]]:
    """Group example indices into batches of similar length.

    Shuffle the examples, sort each pool of ``pool * batch_size`` by length, cut it into
    batches, then shuffle the batches. Without ``shuffle``, batches follow sorted length
    (longest first), which is fastest for inference, and ``max_tokens`` > 0 caps each batch's
    padded size (batch size x its longest length) so long texts come in smaller batches.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = len(lengths)
    lengths_t = torch.as_tensor(list(lengths), dtype=torch.long)
    if not shuffle:
        order = torch.sort(lengths_t, descending=True, stable=True).indices.tolist()
        if max_tokens <= 0:
            return [order[i : i + batch_size] for i in range(0, n, batch_size)]
        batches, start = [], 0
        while start < n:  # the batch's first text is its longest
            size = min(batch_size, max(1, max_tokens // max(1, int(lengths[order[start]]))))
            batches.append(order[start : start + size])
            start += size
        return batches
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    size = max(1, pool) * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, size):
        chunk = order[start : start + size]
        # Sorting by (length, random position) keeps ties in random order.
        chunk = chunk[torch.sort(lengths_t[chunk], stable=True).indices]
        batches.extend(chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Lists of ids -> ``ids (B, T)`` right-padded with ``pad_id`` and ``lengths (B,)``."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = torch.full((len(sequences), int(lengths.max()) if len(sequences) else 0), pad_id)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return ids, lengths


class Batch:
    """Base for batch dataclasses: moves every tensor field to a device."""

    def to(self, device: torch.device | str):
        values = {
            f.name: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return type(self)(**values)


@dataclass
class TextBatch(Batch):
    """Padded token ids with lengths and mask; ``labels`` per example (or None)."""

    ids: Tensor  # (B, T) long
    lengths: Tensor  # (B,) long
    mask: Tensor  # (B, T) bool, True at real tokens
    labels: Tensor | None = None  # (B,) long

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


class TokenStore:
    """Many id sequences in one flat tensor, collated into padded batches without Python
    loops over examples (the text stages must never be what training waits for)."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        # numpy reads Python ints from an iterator 3-4x faster than torch.tensor from a list
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64,
                           count=int(lengths.sum()))
        self.lengths, self.flat = torch.from_numpy(lengths), torch.from_numpy(flat)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def sequences(self) -> list[np.ndarray]:
        """Each example's ids, views of the flat store."""
        return np.split(self.flat.numpy(), np.cumsum(self.lengths.numpy())[:-1])

    def collate(
        self, indices: Sequence[int], labels: Tensor | None = None, pad_id: int = 0
    ) -> TextBatch:
        """Padded batch of the given examples; empty texts become one pad token."""
        index = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[index].clamp(min=1)  # (B,)
        steps = torch.arange(int(lengths.max()))  # (T,)
        mask = steps.unsqueeze(0) < self.lengths[index].unsqueeze(1)  # (B, T)
        positions = (self.offsets[index].unsqueeze(1) + steps).clamp(max=max(len(self.flat) - 1, 0))
        ids = self.flat[positions].masked_fill(~mask, pad_id) if len(self.flat) else \
            torch.full(mask.shape, pad_id)
        return TextBatch(ids, lengths, lengths.unsqueeze(1) > steps,
                         labels[index] if labels is not None else None)
