"""Linear-chain CRF: forward algorithm, gold-path score and Viterbi, batched and masked.

Sequences are left-aligned in the batch: ``mask[b, t]`` is True for ``t < length[b]``, and every
length is at least 1. Scores of a tag path ``y`` for emissions ``e``::

    start[y0] + e[0, y0] + sum_t (trans[y(t-1), yt] + e[t, yt]) + end[y(T-1)]

Transitions that the optional masks forbid are fixed to ``DISALLOWED`` (not learned), so no
probability mass and no Viterbi path ever uses them.
"""

from __future__ import annotations

import torch
from torch import nn

# Large enough that exp() of it vanishes next to any real path, small enough to stay finite
# when added up over a few hundred positions in float32.
DISALLOWED = -10000.0
# Probability-space floors that keep every float32 normal: denormals are very slow on CPU and
# log(0) would give -inf. Paths this far below the best one weigh nothing in float32 anyway.
_MIN_LOG_WEIGHT = -60.0
_TINY = 1e-30


class LinearChainCRF(nn.Module):
    """CRF over ``num_tags`` tags with learned start, transition and end scores."""

    def __init__(
        self,
        num_tags: int,
        start_allowed: torch.Tensor | None = None,
        trans_allowed: torch.Tensor | None = None,
        end_allowed: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.start_scores = nn.Parameter(torch.zeros(num_tags))  # (K,)
        self.trans_scores = nn.Parameter(torch.zeros(num_tags, num_tags))  # (K, K): from, to
        self.end_scores = nn.Parameter(torch.zeros(num_tags))  # (K,)
        ones = torch.ones(num_tags, dtype=torch.bool)
        self.register_buffer("start_allowed", _bool(start_allowed, ones, (num_tags,)))
        self.register_buffer(
            "trans_allowed", _bool(trans_allowed, ones[:, None] & ones, (num_tags, num_tags))
        )
        self.register_buffer("end_allowed", _bool(end_allowed, ones, (num_tags,)))

    def constrained_scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start (K,), transition (K, K) and end (K,) scores with forbidden moves masked."""
        fill = torch.tensor(
            DISALLOWED, dtype=self.start_scores.dtype, device=self.start_scores.device
        )
        return (
            torch.where(self.start_allowed, self.start_scores, fill),
            torch.where(self.trans_allowed, self.trans_scores, fill),
            torch.where(self.end_allowed, self.end_scores, fill),
        )

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log of the summed exp-scores of all paths, (B,), by the forward algorithm."""
        start, trans, end = self.constrained_scores()
        mask = mask.bool()
        alpha = start + emissions[:, 0]  # (B, K)
        # Each step is logsumexp_j(alpha_j + trans_jk), computed as a matrix product in
        # probability space after shifting alpha by its max: several times faster on CPU than
        # a logsumexp over (B, K, K), whose exp() crawls on the DISALLOWED entries.
        # Forbidden transitions become exact zeros in exp(trans).
        exp_trans = trans.exp()  # (K, K)
        for t in range(1, emissions.size(1)):
            shift = alpha.max(dim=1, keepdim=True).values  # (B, 1)
            weights = (alpha - shift).clamp_min(_MIN_LOG_WEIGHT).exp()  # (B, K) in (0, 1]
            summed = torch.mm(weights, exp_trans)  # (B, K)
            step = torch.log(summed.clamp_min(_TINY)) + shift + emissions[:, t]
            alpha = torch.where(mask[:, t : t + 1], step, alpha)
        return torch.logsumexp(alpha + end, dim=1)

    def score(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Score of the given tag paths, (B,); tags (B, T) long, padding positions ignored."""
        start, trans, end = self.constrained_scores()
        mask = mask.bool()
        tags = tags.masked_fill(~mask, 0)  # padding may hold any value, e.g. -100
        maskf = mask.to(emissions.dtype)
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
        total = start[tags[:, 0]] + (emitted * maskf).sum(1)
        if tags.size(1) > 1:
            moved = trans[tags[:, :-1], tags[:, 1:]]  # (B, T-1)
            total = total + (moved * maskf[:, 1:]).sum(1)
        last = mask.long().sum(1) - 1  # (B,)
        last_tags = tags.gather(1, last.unsqueeze(1)).squeeze(1)
        return total + end[last_tags]

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the tag paths, (B,)."""
        return self.log_partition(emissions, mask) - self.score(emissions, tags, mask)

    @torch.no_grad()
    def viterbi_tensor(
        self, emissions: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best paths, padded (B, T) long (padding repeats the last tag), and their scores (B,)."""
        start, trans, end = self.constrained_scores()
        mask = mask.bool()
        batch_size, length, num_tags = emissions.shape
        best = start + emissions[:, 0]  # (B, K)
        identity = torch.arange(num_tags, device=emissions.device).expand(batch_size, num_tags)
        backpointers = []
        for t in range(1, length):
            # best previous tag for each current tag: (B, K_prev, K_cur) -> max over K_prev
            step, pointer = (best.unsqueeze(2) + trans).max(dim=1)
            keep = mask[:, t : t + 1]
            best = torch.where(keep, step + emissions[:, t], best)
            # past the end the path stays on its last tag, so backtracking passes straight through
            backpointers.append(torch.where(keep, pointer, identity))
        scores, tag = (best + end).max(dim=1)  # (B,)
        path = [tag]
        for pointer in reversed(backpointers):
            tag = pointer.gather(1, tag.unsqueeze(1)).squeeze(1)
            path.append(tag)
        path.reverse()
        return torch.stack(path, dim=1), scores

    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Best tag path of each sequence, cut to its length."""
        paths, _ = self.viterbi_tensor(emissions, mask)
        lengths = mask.long().sum(1).tolist()
        return [row[:n] for row, n in zip(paths.tolist(), lengths, strict=True)]


def _bool(
    value: torch.Tensor | None, default: torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    if value is None:
        return default.clone()
    value = torch.as_tensor(value, dtype=torch.bool)
    if tuple(value.shape) != shape:
        raise ValueError(f"CRF constraint mask has shape {tuple(value.shape)}, expected {shape}")
    return value.clone()
