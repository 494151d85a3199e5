"""Decoding outside models: greedy and sampling (temperature, top-k, top-p) over a step function.

A model talks to this module through two callables (no model class is imported here):

- ``step(tokens, state) -> (scores, state)``: ``tokens`` is ``(B,)`` long, ``scores`` is
  ``(B, V)`` logits or log-probabilities (both give the same softmax, so either works).
- ``prime(tokens, state) -> (scores, state)`` (optional): consumes a whole prompt ``(B, T)`` in
  one batched call and returns the scores after its last token ``(B, V)``. Without it the prompt
  is fed through ``step`` one token at a time.

States are whatever the model uses (tensors or tuples of tensors); this module never looks inside
them. Sequence-to-sequence search (:func:`greedy_search`, :func:`beam_search`) also takes
``reorder_state(state, index (M,) long) -> state``, which picks (and repeats) rows of a state:
it expands a batch to beams, follows the surviving beams and drops finished sentences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

State = Any
StepFn = Callable[[Tensor, State], tuple[Tensor, State]]
PrimeFn = Callable[[Tensor, State], tuple[Tensor, State]]


def check_sampling_options(
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Raise ValueError for options outside their domain (temperature >= 0, top_k >= 1,
    0 < top_p <= 1)."""
    if not temperature >= 0.0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Mask (to -inf) every token outside the top-k and outside the top-p nucleus.

    logits: (B, V). top_k keeps exactly the k highest scores.
    top_p keeps the smallest set of highest-probability tokens whose total probability reaches
    top_p, and always at least the most probable token. Both may be combined (top-k first).
    Returns a new (B, V) tensor; None disables a filter.
    """
    check_sampling_options(1.0, top_k, top_p)
    if top_k is not None and top_k < logits.size(-1):
        top = torch.topk(logits, top_k, dim=-1).indices  # (B, k)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # float64 so that a nucleus which reaches p exactly is not missed by rounding
        probs = torch.softmax(logits.double(), dim=-1)  # (B, V)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # probability mass strictly before each token in sorted order: a token is needed while
        # the tokens ranked above it do not yet reach p (the top token has 0 before it)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = before >= top_p  # (B, V)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose one next token per row of logits (B, V) -> (B,) long.

    temperature 0 means greedy: the argmax, no randomness (top_k and top_p are then moot).
    Otherwise scores are divided by the temperature, filtered by top_k / top_p and sampled with
    ``generator`` (pass a seeded torch.Generator for reproducible output; the global RNG is only
    used when it is None).
    """
    check_sampling_options(temperature, top_k, top_p)
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    scores = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(scores, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prime_state(
    step: StepFn, prime_tokens: Tensor, state: State, prime: PrimeFn | None = None
) -> tuple[Tensor, State]:
    """Run a prompt (B, T), T >= 1, through the model; return (scores after it (B, V), state)."""
    if prime_tokens.dim() == 1:
        prime_tokens = prime_tokens.unsqueeze(0)  # (1, T)
    if prime_tokens.size(1) == 0:
        raise ValueError("the prompt must have at least one token (e.g. a start token)")
    with torch.no_grad():
        if prime is not None:
            return prime(prime_tokens, state)
        scores = None
        for t in range(prime_tokens.size(1)):
            scores, state = step(prime_tokens[:, t], state)
        return scores, state


def generate(
    step: StepFn,
    prime_tokens: Tensor,
    state: State,
    length: int,
    *,
    prime: PrimeFn | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield ``length`` token ids continuing ``prime_tokens`` (T,) or (1, T), one at a time.

    The prompt is consumed in one call to ``prime`` when given (else token by token through
    ``step``); it must hold at least one token, so a caller with an empty prompt passes a start
    token. Token ids are yielded as soon as they are chosen, so a caller can stream them.
    temperature 0 is greedy decoding. The same seed and options give the same tokens; seed None
    draws a fresh seed. Options are checked here, before the first token is asked for.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    check_sampling_options(temperature, top_k, top_p)
    if prime_tokens.numel() == 0:
        raise ValueError("the prompt must have at least one token (e.g. a start token)")
    return _generate(step, prime_tokens, state, length, prime, temperature, top_k, top_p, seed)


def _generate(
    step: StepFn,
    prime_tokens: Tensor,
    state: State,
    length: int,
    prime: PrimeFn | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
) -> Iterator[int]:
    scores, state = prime_state(step, prime_tokens, state, prime)
    generator = torch.Generator(device=scores.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    for i in range(length):
        token = sample_next(scores, temperature, top_k, top_p, generator)  # (1,)
        yield int(token[0])
        if i + 1 < length:  # no wasted step after the last token
            # no_grad per call, not around the yield: a suspended generator must not change the
            # caller's grad mode
            with torch.no_grad():
                scores, state = step(token, state)


def decode_batch(
    step: StepFn,
    start_tokens: Tensor,
    state: State,
    max_length: int,
    *,
    eos_id: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Greedy (temperature 0, the default) or sampled decoding of a batch, stopping at eos.

    start_tokens (B,) long is fed first (e.g. <bos>). Returns tokens (B, L) with L <= max_length
    (positions after a row's eos hold eos) and lengths (B,) counting tokens up to and including
    the first eos (max_length when a row never emits it). The loop ends once every row has ended.
    """
    check_sampling_options(temperature, top_k, top_p)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    batch_size = start_tokens.size(0)
    lengths = torch.full((batch_size,), max_length, dtype=torch.long, device=start_tokens.device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=start_tokens.device)
    tokens = start_tokens
    outputs: list[Tensor] = []
    with torch.no_grad():
        for t in range(max_length):
            scores, state = step(tokens, state)  # (B, V)
            tokens = sample_next(scores, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                tokens = tokens.masked_fill(finished, eos_id)
                newly = (tokens == eos_id) & ~finished
                lengths = torch.where(newly, torch.full_like(lengths, t + 1), lengths)
                finished = finished | newly
            outputs.append(tokens)
            if eos_id is not None and bool(finished.all()):
                break
    return torch.stack(outputs, dim=1), lengths  # (B, L), (B,)


# --- sequence-to-sequence search: greedy and beam, stopping at <eos> --------------------------
# Both stop a sentence at ``<eos>`` (not part of the returned tokens) or at its own maximum
# length (``max_lengths``, usually ``a * source_length + b``, see :func:`max_target_lengths`).
# Finished sentences are removed from the batch, so a batch costs what its unfinished
# sentences cost.

ReorderFn = Callable[[State, Tensor], State]
LengthNorm = Literal["none", "average", "gnmt"]


@dataclass(frozen=True)
class Hypothesis:
    """One output sequence: ``tokens`` without ``<bos>``/``<eos>``, its total log-probability
    and the (length-normalised) score beam search ranked it by."""

    tokens: list[int]
    log_prob: float
    score: float


def max_target_lengths(source_lengths: Tensor, a: float = 1.5, b: int = 10) -> Tensor:
    """``floor(a * len + b)`` output steps per sentence (``<eos>`` step included), at least 1."""
    return (source_lengths.float() * a + b).floor().long().clamp(min=1)


def length_penalty(length: int, alpha: float, kind: LengthNorm = "gnmt") -> float:
    """Divisor of a hypothesis' log-probability; non-decreasing in ``length``.

    ``gnmt``: ``((5 + length) / 6) ** alpha`` (Wu et al., 2016; alpha = 0 is no normalisation);
    ``average``: ``length`` (mean log-probability per token); ``none``: 1.
    ``length`` counts the generated tokens including the final ``<eos>``.
    """
    if kind == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if kind == "average":
        return float(max(length, 1))
    if kind == "none":
        return 1.0
    raise ValueError(f"unknown length normalisation {kind!r}")


def greedy_search(
    step: StepFn,
    reorder_state: ReorderFn,
    state: Any,
    bos: Tensor,
    eos_id: int,
    max_lengths: Tensor,
) -> list[Hypothesis]:
    """Pick the most probable token at every step, for a batch at once.

    ``bos`` (B,) are the first decoder inputs, ``max_lengths`` (B,) the most steps per sentence.
    Returns one :class:`Hypothesis` per sentence, in batch order (score = log-probability).
    """
    batch = bos.size(0)
    max_lengths = max_lengths.to(bos.device)
    tokens = bos
    active = torch.arange(batch, device=bos.device)  # original row of each row still decoding
    outputs: list[list[int]] = [[] for _ in range(batch)]
    log_probs_sum = [0.0] * batch
    for t in range(int(max_lengths.max().item()) if batch else 0):
        log_probs, state = step(tokens, state)  # (n, V)
        best, tokens = log_probs.float().max(dim=-1)  # (n,), (n,)
        ended = (tokens == eos_id) | (max_lengths[active] <= t + 1)  # (n,)
        for index, token, score in zip(active.tolist(), tokens.tolist(), best.tolist()):
            log_probs_sum[index] += score
            if token != eos_id:
                outputs[index].append(token)
        if bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)  # (n',)
            state = reorder_state(state, keep)
            tokens = tokens[keep]
            active = active[keep]
    return [Hypothesis(out, lp, lp) for out, lp in zip(outputs, log_probs_sum)]


def beam_search(
    step: StepFn,
    reorder_state: ReorderFn,
    state: Any,
    bos: Tensor,
    eos_id: int,
    max_lengths: Tensor,
    beam_size: int = 5,
    alpha: float = 0.0,
    length_norm: LengthNorm = "gnmt",
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """Batched beam search; returns the ``n_best`` hypotheses of each sentence, best first.

    ``state`` holds B rows (one per sentence) and is expanded to B * beam_size rows here.
    A hypothesis that emits ``<eos>`` is set aside as finished with score
    ``log_prob / length_penalty(length)``; the beam keeps ``beam_size`` unfinished hypotheses
    (chosen among the best ``2 * beam_size`` continuations). A sentence is done when no
    unfinished hypothesis can still beat the best finished one (log-probabilities only fall and
    the penalty is at most that of the maximum length; with ``alpha = 0`` this bound is tight),
    or when it has ``beam_size`` finished hypotheses and the best of them beats the best
    unfinished one as it stands, or at its maximum length, where the unfinished hypotheses are
    finished as they are.
    """
    if beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    if alpha < 0:
        raise ValueError("alpha must be >= 0 (the stopping test needs a non-decreasing penalty)")
    batch, k = bos.size(0), beam_size
    device = bos.device
    max_lengths = max_lengths.to(device)
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # (B*K,)
    state = reorder_state(state, expand)
    tokens = bos[expand]  # (B*K,)
    scores = torch.full((batch, k), -math.inf, device=device)  # (B, K) log-probs so far
    scores[:, 0] = 0.0  # all beams start identical: only the first one may expand
    history: list[list[int]] = [[] for _ in range(batch * k)]  # tokens of each live row
    active = list(range(batch))  # original sentence of each row group still decoding
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]

    for t in range(int(max_lengths.max().item()) if batch else 0):
        log_probs, state = step(tokens, state)  # (n*K, V)
        n = len(active)
        vocab = log_probs.size(-1)
        candidates = scores.unsqueeze(2) + log_probs.float().view(n, k, vocab)  # (n, K, V)
        width = min(2 * k, k * vocab)
        top_scores, top_index = candidates.view(n, k * vocab).topk(width, dim=1)  # (n, 2K)
        top_beams = (top_index // vocab).tolist()
        top_tokens = (top_index % vocab).tolist()
        top_scores_list = top_scores.tolist()
        limits = max_lengths[torch.tensor(active, device=device)].tolist()

        length = t + 1  # generated tokens, this one included
        keep_rows: list[int] = []  # row groups that continue
        sources: list[int] = []  # (n'*K) flat beam each new beam continues
        new_tokens: list[int] = []
        new_scores: list[list[float]] = []
        new_history: list[list[int]] = []
        for row, sentence in enumerate(active):
            forced = length >= limits[row]
            survivors: list[tuple[float, int, int]] = []
            done_here = finished[sentence]
            for score, beam, token in zip(top_scores_list[row], top_beams[row], top_tokens[row]):
                if score == -math.inf:
                    break
                prefix = history[row * k + beam]
                if token == eos_id:
                    penalty = length_penalty(length, alpha, length_norm)
                    done_here.append(Hypothesis(list(prefix), score, score / penalty))
                elif forced:
                    penalty = length_penalty(length, alpha, length_norm)
                    done_here.append(Hypothesis([*prefix, token], score, score / penalty))
                else:
                    survivors.append((score, beam, token))
                if len(survivors) == k or (forced and len(done_here) >= k):
                    break
            if forced or not survivors:
                continue
            if done_here:
                best_done = max(h.score for h in done_here)
                best_alive = survivors[0][0]
                bound = best_alive / length_penalty(limits[row], alpha, length_norm)
                now = best_alive / length_penalty(length, alpha, length_norm)
                if best_done >= bound or (len(done_here) >= k and best_done >= now):
                    continue
            while len(survivors) < k:  # dead beams: never chosen again
                survivors.append((-math.inf, survivors[0][1], eos_id))
            keep_rows.append(row)
            new_scores.append([s for s, _, _ in survivors])
            for _, beam, token in survivors:
                sources.append(row * k + beam)
                new_tokens.append(token)
                new_history.append([*history[row * k + beam], token])
        if not keep_rows:
            break
        index = torch.tensor(sources, device=device)
        state = reorder_state(state, index)
        tokens = torch.tensor(new_tokens, device=device, dtype=bos.dtype)
        scores = torch.tensor(new_scores, device=device)
        history = new_history
        active = [active[row] for row in keep_rows]

    results = []
    for hyps in finished:
        ranked = sorted(hyps, key=lambda h: h.score, reverse=True)
        results.append(ranked[:n_best] or [Hypothesis([], 0.0, 0.0)])
    return results
