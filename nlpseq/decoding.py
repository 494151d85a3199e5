"""Decoding outside models: one loop, with greedy / sampling and beam search as strategies.

A model talks to this module through callables (no model class is imported here):

- ``step(tokens, state) -> (scores, state)`` or ``(scores, state, attention)``: ``tokens`` is
  ``(N,)`` long, ``scores`` ``(N, V)`` logits or log-probabilities (the same softmax, so either
  works for sampling; beam search ranks by their sum, so it wants log-probabilities), and the
  optional ``attention`` ``(N, S)`` the weights over the source behind these scores.
- ``prime(tokens, state)`` (optional): consumes a whole prompt ``(N, T)`` in one batched call and
  returns what ``step`` returns for its last token. Without it the prompt goes through ``step``
  one token at a time.
- ``reorder_state(state, index (M,) long) -> state``: picks (and repeats) rows of a state. The
  loop uses it to expand sentences to beams, follow surviving beams and drop finished rows.

States are whatever the model uses (tensors or tuples of tensors); this module never looks inside
them. :func:`decode` is the loop; a :class:`DecodeStrategy` (:class:`GreedySearch`, which also
samples, or :class:`BeamSearch`) chooses tokens, in the manner of OpenNMT-py's
``decode_strategy.py``. :func:`generate`, :func:`greedy_search` and :func:`beam_search` are the
entry points for language-model generation and sequence-to-sequence search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

State = Any
StepFn = Callable[[Tensor, State], tuple[Any, ...]]
PrimeFn = Callable[[Tensor, State], tuple[Any, ...]]
ReorderFn = Callable[[State, Tensor], State]
LengthNorm = Literal["none", "average", "gnmt"]


def check_sampling_options(
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Raise ValueError for options outside their domain (temperature >= 0, top_k >= 1,
    0 < top_p <= 1)."""
    if not 0.0 <= temperature < math.inf:  # also rejects NaN
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), "
                         f"got {temperature}")
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


@dataclass(frozen=True)
class Sampler:
    """Sampling options for :class:`GreedySearch`; temperature 0 is the argmax."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        check_sampling_options(self.temperature, self.top_k, self.top_p)

    def __call__(self, scores: Tensor) -> Tensor:
        """scores (N, V) -> chosen tokens (N,) long."""
        return sample_next(scores, self.temperature, self.top_k, self.top_p, self.generator)


@dataclass(frozen=True)
class Hypothesis:
    """One output sequence: ``tokens`` without ``<bos>``/``<eos>``, its total log-probability,
    the (length-normalised) score search ranked it by and, when asked for, its ``attention``
    (steps, S): one row per decoding step, the ``<eos>`` step included."""

    tokens: list[int]
    log_prob: float
    score: float
    attention: Tensor | None = field(default=None, compare=False, repr=False)


#: most tokens a decoding makes per sequence (its token buffer is allocated up front)
MAX_GENERATE_LENGTH = 1_000_000


#: widest beam: each sentence decodes this many rows at once
MAX_BEAM = 1000


def max_target_lengths(source_lengths: Tensor, a: float = 1.5, b: int = 10) -> Tensor:
    """``floor(a * len + b)`` output steps per sentence (``<eos>`` step included), at least 1
    and at most :data:`MAX_GENERATE_LENGTH` (buffers sized by it are allocated up front)."""
    steps = (source_lengths.float() * a + b).floor().clamp(max=MAX_GENERATE_LENGTH)
    return steps.long().clamp(min=1)


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


# --- the loop ---------------------------------------------------------------------------------


class DecodeStrategy:
    """How tokens are chosen: the part of decoding that differs between greedy and beam search.

    :func:`decode` calls ``select`` with every step's scores; when ``is_finished`` has a True
    row it calls ``update_finished``, which sets finished rows aside and drops them; then the
    model's state is reordered by ``select_indices`` (when not None) and ``current_tokens`` is
    fed to the next step. ``done`` ends the loop. ``start_indices`` (when not None) expands the
    initial state's rows before the first step (sentences to beams).
    """

    start_indices: Tensor | None = None
    current_tokens: Tensor  # (N,) long: the tokens chosen for the rows still decoding
    select_indices: Tensor | None = None  # (N,) long: the previous row each row continues
    is_finished: Tensor  # bool: the rows (beam search: sentences) that ended at the last select
    done: bool = False

    def select(self, scores: Tensor, attention: Tensor | None = None) -> None:
        """Choose the next tokens from one step's scores (N, V) (and attention (N, S))."""
        raise NotImplementedError

    def update_finished(self) -> None:
        """Set the finished rows' results aside and drop those rows."""
        raise NotImplementedError


def _unpack(output: tuple[Any, ...]) -> tuple[Tensor, State, Tensor | None]:
    """A step's ``(scores, state)`` or ``(scores, state, attention)`` -> all three."""
    return output[0], output[1], output[2] if len(output) > 2 else None


def _run_prompt(
    step: StepFn, prime: PrimeFn | None, prompt: Tensor, state: State
) -> tuple[Tensor, State, Tensor | None]:
    """Feed a prompt (N, T), T >= 1; return what the step after its last token gives."""
    with torch.no_grad():
        if prime is not None:
            return _unpack(prime(prompt, state))
        for t in range(prompt.size(1)):
            scores, state, attention = _unpack(step(prompt[:, t], state))
        return scores, state, attention


def decode(
    step: StepFn,
    state: State,
    strategy: DecodeStrategy,
    prompt: Tensor,
    *,
    prime: PrimeFn | None = None,
    reorder_state: ReorderFn | None = None,
) -> Iterator[Tensor]:
    """The decoding loop shared by every strategy; yields the tokens chosen at each step.

    ``prompt`` (N, T), T >= 1, is fed first (``<bos>`` for translation). Each yielded tensor is
    ``strategy.current_tokens`` right after ``select``, before the next step runs, so a caller
    can stream tokens; nothing runs after the step that finishes the last row. Results stay in
    the strategy. ``reorder_state`` is needed once the strategy reorders rows.
    """
    if strategy.done:
        return
    if strategy.start_indices is not None:
        state = _reorder(reorder_state, state, strategy.start_indices)
        prompt = prompt.index_select(0, strategy.start_indices)
    scores, state, attention = _run_prompt(step, prime, prompt, state)
    while True:
        strategy.select(scores, attention)
        yield strategy.current_tokens
        if bool(strategy.is_finished.any()):
            strategy.update_finished()
            if strategy.done:
                return
        if strategy.select_indices is not None:
            state = _reorder(reorder_state, state, strategy.select_indices)
        # no_grad per call, not around the yield: a suspended generator must not change the
        # caller's grad mode
        with torch.no_grad():
            scores, state, attention = _unpack(step(strategy.current_tokens, state))


def _reorder(reorder_state: ReorderFn | None, state: State, index: Tensor) -> State:
    """``reorder_state(state, index)``, refused when the caller gave none."""
    if reorder_state is None:
        raise ValueError("this decoding reorders rows of the state: pass reorder_state")
    return reorder_state(state, index)


def run(
    step: StepFn,
    state: State,
    strategy: DecodeStrategy,
    prompt: Tensor,
    *,
    prime: PrimeFn | None = None,
    reorder_state: ReorderFn | None = None,
) -> DecodeStrategy:
    """Run :func:`decode` to the end and return the strategy, which holds the results."""
    for _ in decode(step, state, strategy, prompt, prime=prime, reorder_state=reorder_state):
        pass
    return strategy


# --- greedy search and sampling ---------------------------------------------------------------


class GreedySearch(DecodeStrategy):
    """One token per row and step: the best one, or one drawn by ``sampler``.

    A row ends at ``eos_id`` (None: never) or after ``max_lengths`` (B,) steps. Tokens and
    attention go into (B, L) buffers at each row's original index, so finished rows cost
    nothing more. ``hypotheses`` holds one :class:`Hypothesis` per row, in batch order, with
    score = log_prob = the sum of the chosen tokens' scores.
    """

    def __init__(
        self,
        max_lengths: Tensor,
        eos_id: int | None = None,
        sampler: Sampler | None = None,
        attention: bool = False,
    ):
        batch, device = max_lengths.size(0), max_lengths.device
        self.eos_id, self.keep_attention = eos_id, attention
        self.sampler = sampler if sampler is not None and sampler.temperature > 0 else None
        self.limits = max_lengths  # (N,) of the rows still decoding
        self.active = torch.arange(batch, device=device)  # (N,) original row of each row
        self.rows: Tensor | slice = slice(None)  # buffer rows of self.active (all at first)
        self.length = 0  # steps taken
        width = max(1, int(max_lengths.max())) if batch else 0
        self.tokens = torch.zeros(batch, width, dtype=torch.long, device=device)  # (B, L)
        self.attention: Tensor | None = None  # (B, L, S) once a step gives attention
        self.log_probs = torch.zeros(batch, dtype=torch.float64, device=device)  # (N,)
        self.hypotheses: list[Hypothesis] = [Hypothesis([], 0.0, 0.0)] * batch
        self.done = batch == 0

    def select(self, scores: Tensor, attention: Tensor | None = None) -> None:
        """Choose (argmax or sample) one token per row from scores (N, V)."""
        if self.sampler is None:
            best, tokens = scores.float().max(dim=-1)  # (N,), (N,)
        else:
            tokens = self.sampler(scores)  # (N,)
            best = scores.float().gather(1, tokens.unsqueeze(1)).squeeze(1)
        self.tokens[self.rows, self.length] = tokens
        self.log_probs.add_(best)  # float64 sums of the float32 scores
        if self.keep_attention and attention is not None:
            if self.attention is None:
                shape = (self.tokens.size(0), self.tokens.size(1), attention.size(-1))
                self.attention = attention.new_zeros(shape, dtype=torch.float32)
            self.attention[self.rows, self.length] = attention.float()
        self.length += 1
        self.is_finished = self.limits <= self.length  # (N,)
        if self.eos_id is not None:
            self.is_finished |= tokens == self.eos_id
        self.current_tokens = tokens
        self.select_indices = None

    def update_finished(self) -> None:
        """Store the finished rows' hypotheses and keep the other rows."""
        finished = self.is_finished.nonzero().squeeze(1).tolist()
        for index, row in zip(finished, self.active[finished].tolist()):
            tokens = self.tokens[row, : self.length].tolist()
            attention = self.attention[row, : self.length] if self.attention is not None else None
            if tokens and tokens[-1] == self.eos_id:
                tokens.pop()
            log_prob = float(self.log_probs[index])
            self.hypotheses[row] = Hypothesis(tokens, log_prob, log_prob, attention)
        keep = (~self.is_finished).nonzero().squeeze(1)  # (N',)
        for name in ("active", "limits", "log_probs", "current_tokens", "is_finished"):
            setattr(self, name, getattr(self, name)[keep])
        self.rows = self.active
        self.select_indices = keep
        self.done = keep.numel() == 0


# --- beam search ------------------------------------------------------------------------------


class BeamSearch(DecodeStrategy):
    """Batched beam search over B sentences x K beams, its bookkeeping in (B, K) tensors.

    Each step ranks the best ``2K`` continuations of a sentence's beams. A continuation that
    emits ``<eos>`` is set aside as finished with score ``log_prob / length_penalty(length)``;
    the first K others survive (fewer when the rest are impossible: their slots get score -inf).
    A sentence ends when no survivor can still beat its best finished hypothesis
    (log-probabilities only fall and the penalty is at most that of the maximum length; with
    ``alpha = 0`` this bound is tight), or when it has K finished hypotheses and the best of
    them beats the best survivor as it stands, or at its maximum length, where continuations
    are finished as they are (best first, until it has K). ``hypotheses`` holds the ``n_best``
    finished hypotheses of each sentence, best first.
    """

    def __init__(
        self,
        max_lengths: Tensor,
        eos_id: int,
        beam_size: int = 5,
        *,
        alpha: float = 0.0,
        length_norm: LengthNorm = "gnmt",
        n_best: int = 1,
        attention: bool = False,
    ):
        if not 1 <= beam_size <= MAX_BEAM:
            raise ValueError(f"beam_size must be between 1 and {MAX_BEAM:,}, got {beam_size}")
        if alpha < 0:
            raise ValueError(
                "alpha must be >= 0 (the stopping test needs a non-decreasing penalty)"
            )
        batch, device, k = max_lengths.size(0), max_lengths.device, beam_size
        self.eos_id, self.k, self.n_best, self.keep_attention = eos_id, k, n_best, attention
        self.penalty = lambda length: length_penalty(length, alpha, length_norm)
        width = int(max_lengths.max()) if batch else 0
        # the same Python floats the finished scores are divided by
        self.penalties = torch.tensor([self.penalty(n) for n in range(width + 1)],
                                      dtype=torch.float64, device=device)
        self.limits = max_lengths  # (n,) for the n sentences still decoding
        self.active = torch.arange(batch, device=device)  # (n,) original sentence index
        self.start_indices = self.active.repeat_interleave(k)  # (B*K,)
        self.scores = torch.full((batch, k), -math.inf, device=device)  # (n, K) log-probs
        self.scores[:, 0] = 0.0  # all beams start identical: only the first one may expand
        self.alive = torch.zeros(batch * k, 0, dtype=torch.long, device=device)  # (n*K, t)
        self.alive_attention: Tensor | None = None  # (n*K, t, S)
        self.n_done = torch.zeros(batch, dtype=torch.long, device=device)  # (n,)
        self.best_done = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)
        self.finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
        self.length = 0
        self.done = batch == 0

    def select(self, scores: Tensor, attention: Tensor | None = None) -> None:
        """Extend every beam by one token: scores (n*K, V) are log-probabilities."""
        self.length += 1
        n, k, vocab = self.scores.size(0), self.k, scores.size(-1)
        candidates = self.scores.unsqueeze(2) + scores.float().view(n, k, vocab)  # (n, K, V)
        width = min(2 * k, k * vocab)
        top_scores, top_index = candidates.view(n, k * vocab).topk(width, dim=1)  # (n, 2K)
        tokens = top_index % vocab  # (n, 2K)
        rows = top_index // vocab + torch.arange(n, device=tokens.device).unsqueeze(1) * k
        if not (self.keep_attention and attention is not None):
            attention = None
        finish, survive = self._classify(top_scores, tokens)
        if bool(finish.any()):
            self._set_aside(finish, top_scores, tokens, rows, attention)
        self._advance(survive, top_scores, tokens, rows, attention)

    def _classify(self, top_scores: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Which ranked continuations (n, 2K) finish now, and which survive."""
        k = self.k
        finite = top_scores != -math.inf
        is_eos = tokens == self.eos_id
        open_ = finite & ~is_eos
        # a continuation counts while fewer than K surviving ones rank above it
        above = open_.long().cumsum(1) - open_.long()
        counted = finite & (above < k)
        forced = (self.limits <= self.length).unsqueeze(1)  # (n, 1): the last step allowed
        rank = torch.arange(top_scores.size(1), device=tokens.device)
        take = (k - self.n_done).clamp(min=1).unsqueeze(1)  # at the limit: fill up to K
        finish = torch.where(forced, finite & (rank < take), counted & is_eos)
        return finish, counted & open_ & ~forced

    def _set_aside(
        self, finish: Tensor, top_scores: Tensor, tokens: Tensor, rows: Tensor,
        attention: Tensor | None,
    ) -> None:
        """Store the finishing continuations (in rank order) as hypotheses."""
        penalty = self.penalty(self.length)
        normalised = (top_scores.double() / penalty).masked_fill(~finish, -math.inf)
        self.best_done = torch.maximum(self.best_done, normalised.max(dim=1).values)
        self.n_done += finish.sum(dim=1)
        active = self.active.tolist()
        for r, j in finish.nonzero().tolist():
            row, token = int(rows[r, j]), int(tokens[r, j])
            prefix = self.alive[row].tolist() + ([] if token == self.eos_id else [token])
            weights = None
            if attention is not None:
                steps = [attention[row : row + 1]]
                if self.alive_attention is not None:
                    steps.insert(0, self.alive_attention[row])
                weights = torch.cat(steps).float()
            log_prob = float(top_scores[r, j])
            self.finished[active[r]].append(Hypothesis(prefix, log_prob, log_prob / penalty,
                                                       weights))

    def _advance(
        self, survive: Tensor, top_scores: Tensor, tokens: Tensor, rows: Tensor,
        attention: Tensor | None,
    ) -> None:
        """Keep the first K survivors of every sentence and decide which sentences end."""
        k, width = self.k, survive.size(1)
        rank = torch.arange(width, device=tokens.device)
        slots = (rank + width * (~survive).long()).argsort(dim=1)[:, :k]  # (n, K) survivors first
        count = survive.sum(dim=1)  # (n,)
        real = torch.arange(k, device=tokens.device).unsqueeze(0) < count.unsqueeze(1)  # (n, K)
        slots = torch.where(real, slots, slots[:, :1])  # empty slots: the best survivor's beam
        self.scores = top_scores.gather(1, slots).masked_fill(~real, -math.inf)
        new_tokens = tokens.gather(1, slots).masked_fill(~real, self.eos_id).view(-1)  # (n*K,)
        sources = rows.gather(1, slots).view(-1)  # (n*K,) back-pointers
        best_alive = self.scores[:, 0].double()
        bound = best_alive / self.penalties[self.limits.clamp(min=0, max=len(self.penalties) - 1)]
        now = best_alive / self.penalties[self.length]
        beaten = (self.best_done >= bound) | ((self.n_done >= k) & (self.best_done >= now))
        self.is_finished = (self.limits <= self.length) | (count == 0)
        self.is_finished |= (self.n_done > 0) & beaten
        self.alive = torch.cat([self.alive[sources], new_tokens.unsqueeze(1)], dim=1)
        if attention is not None:
            step = attention[sources].unsqueeze(1).float()  # (n*K, 1, S)
            history = self.alive_attention
            self.alive_attention = step if history is None else torch.cat(
                [history[sources], step], dim=1)
        self.current_tokens, self.select_indices = new_tokens, sources

    def update_finished(self) -> None:
        """Drop the sentences whose search ended (their hypotheses are already stored)."""
        keep = (~self.is_finished).nonzero().squeeze(1)  # (n',)
        flat = (keep.unsqueeze(1) * self.k + torch.arange(self.k, device=keep.device)).view(-1)
        for name in ("scores", "limits", "active", "n_done", "best_done", "is_finished"):
            setattr(self, name, getattr(self, name)[keep])
        self.alive = self.alive[flat]
        if self.alive_attention is not None:
            self.alive_attention = self.alive_attention[flat]
        self.current_tokens = self.current_tokens[flat]
        self.select_indices = self.select_indices[flat]
        self.done = keep.numel() == 0

    @property
    def hypotheses(self) -> list[list[Hypothesis]]:
        """The ``n_best`` finished hypotheses of every sentence, best first, in batch order."""
        results = []
        for hyps in self.finished:
            ranked = sorted(hyps, key=lambda h: h.score, reverse=True)  # stable: ties by order
            results.append(ranked[: self.n_best] or [Hypothesis([], 0.0, 0.0)])
        return results


# --- entry points -----------------------------------------------------------------------------


def check_length(length: int) -> None:
    """Raise ValueError for a generation length outside 1..:data:`MAX_GENERATE_LENGTH`."""
    if not 1 <= length <= MAX_GENERATE_LENGTH:
        raise ValueError(f"length must be between 1 and {MAX_GENERATE_LENGTH:,}, got {length}")


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
    token. Token ids are yielded as soon as they are chosen, so a caller can stream them; nothing
    runs before the first one is asked for. temperature 0 is greedy decoding. The same seed and
    options give the same tokens; seed None draws a fresh seed. Options are checked here.
    """
    check_length(length)
    check_sampling_options(temperature, top_k, top_p)
    if prime_tokens.numel() == 0:
        raise ValueError("the prompt must have at least one token (e.g. a start token)")
    prompt = prime_tokens.view(1, -1)  # (1, T)
    generator = torch.Generator(device=prompt.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed % 2**64)  # any integer; torch takes 64 bits
    sampler = Sampler(temperature, top_k, top_p, generator)
    lengths = torch.tensor([length], device=prompt.device)
    strategy = GreedySearch(lengths, eos_id=None, sampler=sampler)
    return (int(tokens[0]) for tokens in decode(step, state, strategy, prompt, prime=prime))


def greedy_search(
    step: StepFn,
    reorder_state: ReorderFn,
    state: State,
    bos: Tensor,
    eos_id: int,
    max_lengths: Tensor,
    *,
    sampler: Sampler | None = None,
    attention: bool = False,
) -> list[Hypothesis]:
    """The most probable token at every step (or one drawn by ``sampler``), for a batch at once.

    ``bos`` (B,) are the first decoder inputs, ``max_lengths`` (B,) the most steps per sentence.
    Returns one :class:`Hypothesis` per sentence, in batch order (score = log-probability); with
    ``attention`` each carries the weights the step function returned.
    """
    strategy = GreedySearch(max_lengths.to(bos.device), eos_id, sampler, attention)
    run(step, state, strategy, bos.unsqueeze(1), reorder_state=reorder_state)
    return strategy.hypotheses


def beam_search(
    step: StepFn,
    reorder_state: ReorderFn,
    state: State,
    bos: Tensor,
    eos_id: int,
    max_lengths: Tensor,
    beam_size: int = 5,
    alpha: float = 0.0,
    length_norm: LengthNorm = "gnmt",
    n_best: int = 1,
    *,
    attention: bool = False,
) -> list[list[Hypothesis]]:
    """Batched beam search (see :class:`BeamSearch`); the ``n_best`` hypotheses of each
    sentence, best first. ``state`` holds B rows (one per sentence), expanded to B * beam_size
    rows here; with ``attention`` each hypothesis carries its weights."""
    strategy = BeamSearch(max_lengths.to(bos.device), eos_id, beam_size, alpha=alpha,
                          length_norm=length_norm, n_best=n_best, attention=attention)
    run(step, state, strategy, bos.unsqueeze(1), reorder_state=reorder_state)
    return strategy.hypotheses
