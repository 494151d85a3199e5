"""Language-model data for truncated BPTT: one token stream -> contiguous lanes -> windows.

The stream is cut into ``batch_size`` contiguous lanes (lane i holds the i-th slice of the text)
and read ``seq_len`` tokens at a time, so window w + 1 of lane i continues exactly where window w
ended and a stateful model can carry its hidden state across windows. Every target (each token
after the first) is in exactly one window; the end of the last lane is padded with IGNORE targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nlpseq.metrics import LossCounts

IGNORE = -100  # target id that cross_entropy(ignore_index=-100) skips


@dataclass
class LMBatch:
    """One window of all lanes: inputs and next-token targets, (B, T) each."""

    inputs: Tensor  # (B, T) long
    targets: Tensor  # (B, T) long, IGNORE in padding
    num_tokens: int  # real targets in the window

    def to(self, device: torch.device | str) -> LMBatch:
        return LMBatch(self.inputs.to(device), self.targets.to(device), self.num_tokens)


def make_lanes(stream: Tensor, batch_size: int, context: int = 0) -> tuple[Tensor, Tensor]:
    """Cut a 1-D stream into ``batch_size`` contiguous lanes of inputs and next-token targets.

    Returns inputs and targets, (B, R) each, long. Without context, R = L = ceil((N - 1) / B)
    and lane i reads and predicts input positions [i*L, (i+1)*L). With ``context`` C, every lane
    reads R = L + C positions, L = ceil((N - 1 - C) / B): lane 0 predicts all of [0, L + C),
    lane i > 0 reads [i*L, i*L + L + C) but predicts only its last L positions, so it starts
    scoring with C tokens of history instead of an empty state. Either way every target is
    predicted exactly once. Positions past the end hold input 0 and target IGNORE.
    """
    lanes = _Lanes(stream, batch_size, context)
    return lanes.columns(0, lanes.length)


class _Lanes:
    """The lane layout of :func:`make_lanes`, read a few columns at a time."""

    def __init__(self, stream: Tensor, batch_size: int, context: int):
        if stream.dim() != 1:
            raise ValueError(f"expected a 1-D token stream, got shape {tuple(stream.shape)}")
        if batch_size < 1 or context < 0:
            raise ValueError(f"need batch_size >= 1 and context >= 0, got {batch_size}, "
                             f"{context}")
        self.stream, self.batch_size = stream, batch_size
        self.n_targets = max(len(stream) - 1, 0)
        self.context = 0 if batch_size == 1 or self.n_targets <= context else context
        self.lane_len = math.ceil((self.n_targets - self.context) / batch_size)
        self.length = self.lane_len + self.context  # R: positions each lane reads

    def columns(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Inputs and targets of lane positions [start, stop), (B, stop - start) long each."""
        read = torch.arange(start, stop)
        lane = torch.arange(self.batch_size).unsqueeze(1)  # (B, 1)
        positions = lane * self.lane_len + read  # (B, R') input positions
        scored = (read >= self.context) | (lane == 0)
        inside = positions < self.n_targets
        if not self.n_targets:
            return torch.zeros_like(positions), torch.full_like(positions, IGNORE)
        clamped = positions.clamp(max=self.n_targets - 1)
        # .long(): the stream may be held in a narrower type (see CharCodec.encode_pieces)
        inputs = torch.where(inside, self.stream[clamped].long(), 0)
        targets = torch.where(inside & scored, self.stream[clamped + 1].long(), IGNORE)
        return inputs, targets


def iter_windows(
    stream: Tensor, batch_size: int, seq_len: int, offset: int = 0, context: int = 0
) -> Iterator[LMBatch]:
    """Windows of ``seq_len`` tokens over ``batch_size`` lanes, in reading order, each
    gathered from the stream when it is reached (memory: the stream and one window).

    offset drops the first ``offset`` tokens (a trainer may vary it per epoch so that window
    boundaries move); context is :func:`make_lanes`'s. The last window may be shorter.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    lanes = _Lanes(stream[offset:], batch_size, context)
    for start in range(0, lanes.length, seq_len):
        inputs, targets = lanes.columns(start, min(start + seq_len, lanes.length))
        yield LMBatch(inputs, targets, int((targets != IGNORE).sum()))


def lm_windows(
    stream: Tensor, batch_size: int, seq_len: int, offset: int = 0, context: int = 0
) -> list[LMBatch]:
    """All of :func:`iter_windows`'s windows."""
    return list(iter_windows(stream, batch_size, seq_len, offset, context))


def evaluate_stream(
    model: Callable[..., Any],
    stream: Tensor,
    batch_size: int,
    seq_len: int,
    device: torch.device | str = "cpu",
    context: int = 0,
    adapt_lr: float = 0.0,
) -> dict[str, float | int]:
    """Summed loss over every target of a stream with a stateful LM (forward(batch, carry)).

    The stream is read in ``batch_size`` lanes, each from the model's zero state, carrying the
    state across its windows; with ``context`` each lane but the first reads that many tokens
    before its first scored one (see :func:`make_lanes`). Lanes are reduced so that each scores
    at least ``context`` tokens. Metrics come from the total loss over all tokens, never from a
    mean of window means.

    With ``adapt_lr`` > 0 this is dynamic evaluation (Krause et al., 2018): after a window is
    scored, one SGD step of that size on its mean loss adapts the model to the text read so
    far, so each target is still predicted before the model has seen it. The model's
    weights are restored afterwards.
    """
    n_targets = len(stream) - 1
    if context > 0:
        batch_size = min(batch_size, max(1, (n_targets - context) // context))
    batch_size = max(1, min(batch_size, n_targets))
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    counts, carry = LossCounts(bits_key="bpc", count_key="n_chars"), None
    adaptation = _Adaptation(model, adapt_lr) if adapt_lr > 0 else None
    try:
        with torch.enable_grad() if adaptation else torch.no_grad():
            for batch in iter_windows(stream, batch_size, seq_len, context=context):
                window_loss, window_count, carry = model(batch.to(device), carry)
                counts.add(float(window_loss.detach()), window_count)
                if adaptation and window_count:
                    adaptation.step(window_loss / window_count)
    finally:
        if adaptation:
            adaptation.restore()
        if was_training:
            model.train()
    return counts.result()


class _Adaptation:
    """Plain SGD on the model's weights while it reads a text, undone by :meth:`restore`."""

    def __init__(self, model: Any, lr: float):
        self.lr = lr
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.saved = [p.detach().clone() for p in self.params]

    def step(self, loss: Tensor) -> None:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        with torch.no_grad():
            for param, grad in zip(self.params, grads):
                if grad is not None:
                    param.sub_(grad, alpha=self.lr)

    def restore(self) -> None:
        with torch.no_grad():
            for param, saved in zip(self.params, self.saved):
                param.copy_(saved)
