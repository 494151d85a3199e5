"""Decoding over a step function: filters, sampling, greedy, streaming generation."""

from __future__ import annotations

import pytest
import torch

from nlpseq.decoding import (
    GreedySearch,
    Sampler,
    decode,
    filter_logits,
    generate,
    greedy_search,
    sample_next,
)

# a hand-made distribution with exact binary fractions, so "reaches p" has no rounding doubt
PROBS = [0.0625, 0.5, 0.125, 0.0625, 0.25]  # ranks: 1, 4, 2, then 0 and 3 (tied)


def kept(logits: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(logits[0].tolist()) if v != float("-inf")}


@pytest.mark.parametrize(
    "top_p, expected",
    [
        (0.01, {1}),  # always at least the most probable token
        (0.5, {1}),  # 0.5 reaches 0.5 exactly
        (0.51, {1, 4}),
        (0.75, {1, 4}),
        (0.76, {1, 4, 2}),
        (0.875, {1, 4, 2}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(top_p, expected):
    logits = torch.tensor([PROBS]).log() + 3.0  # a constant shift must not matter
    assert kept(filter_logits(logits, top_p=top_p)) == expected


def test_top_p_after_one_of_tied_tokens():
    # 0.5 + 0.25 + 0.125 = 0.875; p = 0.9 needs one of the two 0.0625 tokens, not both
    logits = torch.tensor([PROBS]).log()
    assert len(kept(filter_logits(logits, top_p=0.9))) == 4


def test_top_k_keeps_k_best_per_row():
    logits = torch.tensor([[0.1, 2.0, -1.0, 3.0], [5.0, 4.0, 3.0, 2.0]])
    filtered = filter_logits(logits, top_k=2)
    assert kept(filtered[:1]) == {1, 3}
    assert kept(filtered[1:]) == {0, 1}
    assert torch.equal(filtered[0, [1, 3]], logits[0, [1, 3]])  # kept scores unchanged


def test_filters_reject_bad_options():
    logits = torch.zeros(1, 3)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="top_p"):
            filter_logits(logits, top_p=bad)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1.0)


def test_top_k_one_and_temperature_zero_equal_greedy():
    torch.manual_seed(0)
    logits = torch.randn(200, 30)
    greedy = logits.argmax(-1)
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(sample_next(logits, temperature=0.0), greedy)
    assert torch.equal(sample_next(logits, 1.0, top_k=1, generator=generator), greedy)
    assert torch.equal(sample_next(logits, 2.5, top_k=1, generator=generator), greedy)


def test_sampling_never_picks_filtered_tokens_and_follows_probabilities():
    logits = torch.tensor([PROBS]).log().expand(20000, -1)
    generator = torch.Generator().manual_seed(0)
    tokens = sample_next(logits, 1.0, top_p=0.75, generator=generator)
    counts = torch.bincount(tokens, minlength=5).tolist()
    assert counts[0] == counts[2] == counts[3] == 0
    # renormalised nucleus: 0.5 / 0.75 and 0.25 / 0.75
    assert abs(counts[1] / 20000 - 2 / 3) < 0.02


# A toy model: the next-token scores depend on the last token (a bigram table) and the state
# counts the tokens consumed, so priming in one call can be checked against stepping.
VOCAB = 7
TABLE = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(3))


def bigram_step(tokens, state):
    return TABLE[tokens], state + 1


def bigram_prime(tokens, state):
    return TABLE[tokens[:, -1]], state + tokens.size(1)


def test_generate_is_deterministic_with_a_seed():
    prompt = torch.tensor([1, 2, 3])
    state = torch.zeros(())

    def run(seed):
        return list(generate(bigram_step, prompt, state, 50, temperature=1.0, seed=seed))

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert all(0 <= t < VOCAB for t in run(7))


def test_generate_prime_in_one_call_equals_stepping():
    prompt = torch.tensor([4, 0, 5, 5])
    options = {"temperature": 0.9, "top_k": 5, "top_p": 0.95, "seed": 11}
    stepped = list(generate(bigram_step, prompt, torch.zeros(()), 40, **options))
    primed = list(generate(bigram_step, prompt, torch.zeros(()), 40, prime=bigram_prime, **options))
    assert stepped == primed


def test_generate_greedy_follows_argmax_chain_and_streams():
    calls = []

    def counting_step(tokens, state):
        calls.append(int(tokens[0]))
        return bigram_step(tokens, state)

    tokens = generate(counting_step, torch.tensor([2]), torch.zeros(()), 5, temperature=0.0)
    assert calls == []  # lazy: nothing runs before the first token is asked for
    first = next(tokens)
    assert first == int(TABLE[2].argmax())
    assert calls == [2]  # the prompt only: a token is yielded before the next step runs
    rest = list(tokens)
    expected, last = [], 2
    for _ in range(5):
        last = int(TABLE[last].argmax())
        expected.append(last)
    assert [first, *rest] == expected
    assert len(calls) == 5  # prompt + 4 steps, none after the last token


def test_generate_checks_options_eagerly():
    with pytest.raises(ValueError, match="length"):
        generate(bigram_step, torch.tensor([1]), None, 0)
    with pytest.raises(ValueError, match="top_p"):
        generate(bigram_step, torch.tensor([1]), None, 5, top_p=1.5)
    with pytest.raises(ValueError, match="prompt"):
        generate(bigram_step, torch.tensor([], dtype=torch.long), None, 5)


def counting_chain(tokens, state):
    """token t -> t + 1, and 3 -> eos (0); the state counts the rows each step saw."""
    following = torch.where(tokens >= 3, torch.zeros_like(tokens), tokens + 1)
    return torch.nn.functional.one_hot(following, 5).float().log(), [*state, tokens.numel()]


def test_greedy_stops_each_row_at_eos_and_drops_it():
    seen = []

    def step(tokens, state):
        scores, state = counting_chain(tokens, state)
        seen.append(tokens.tolist())
        return scores, state

    found = greedy_search(step, lambda state, index: state, [], torch.tensor([1, 3, 2]), 0,
                          torch.full((3,), 10))
    assert [h.tokens for h in found] == [[2, 3], [], [3]]
    assert [h.log_prob for h in found] == [0.0, 0.0, 0.0]
    assert seen == [[1, 3, 2], [2, 3], [3]]  # finished rows are no longer stepped


def test_loop_yields_each_step_before_running_the_next():
    strategy = GreedySearch(torch.tensor([4, 4]), eos_id=None)
    steps = decode(counting_chain, [], strategy, torch.tensor([[0], [2]]))
    assert next(steps).tolist() == [1, 3]
    assert next(steps).tolist() == [2, 0]
    assert len(list(steps)) == 2 and strategy.done
    assert [h.tokens for h in strategy.hypotheses] == [[1, 2, 3, 0], [3, 0, 1, 2]]


def test_sampling_strategy_draws_what_sample_next_draws():
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    sampler = Sampler(1.3, top_k=4, generator=torch.Generator().manual_seed(9))
    strategy = GreedySearch(torch.tensor([1, 1, 1]), sampler=sampler)
    strategy.select(logits)
    expected = sample_next(logits, 1.3, 4, None, torch.Generator().manual_seed(9))
    assert torch.equal(strategy.current_tokens, expected)
    assert torch.equal(strategy.log_probs, logits.gather(1, expected[:, None]).squeeze(1).double())
    with pytest.raises(ValueError, match="top_p"):
        Sampler(top_p=0.0)
