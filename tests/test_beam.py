"""Greedy and beam search against hand-computed cases and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nlpseq.decoding import beam_search, greedy_search, length_penalty, max_target_lengths

BOS, EOS = 0, 1


def make_step(table):
    """A step function over a state ``(sentence ids (N,), prefixes (N, t))``.

    ``table(sentence, prefix) -> list of probabilities`` gives the next-token distribution.
    """

    def step(tokens, state):
        sentences, prefixes = state
        prefixes = torch.cat([prefixes, tokens.unsqueeze(1)], dim=1)  # (N, t+1)
        rows = []
        for sentence, prefix in zip(sentences.tolist(), prefixes.tolist()):
            rows.append(table(sentence, tuple(prefix[1:])))  # drop <bos>
        probs = torch.tensor(rows, dtype=torch.float64)
        return probs.log(), (sentences, prefixes)

    return step


def reorder(state, index):
    return tuple(part.index_select(0, index) for part in state)


def initial_state(batch):
    return (torch.arange(batch), torch.empty(batch, 0, dtype=torch.long))


def random_table(vocab, seed):
    """A fixed random distribution for every (sentence, prefix), with some mass on <eos>."""

    def table(sentence, prefix):
        generator = torch.Generator().manual_seed(hash((seed, sentence, prefix)) % (2**31))
        logits = torch.randn(vocab, generator=generator, dtype=torch.float64) * 2
        logits[BOS] = -math.inf  # <bos> is never generated
        return torch.softmax(logits, dim=0).tolist()

    return table


# vocabulary: 0 <bos>, 1 <eos>, 2 A, 3 B
def greedy_trap(sentence, prefix):
    """Greedy takes A (0.6) then A (0.4) then <eos>: p(A A) = 0.24.
    The best sequence is B <eos>: 0.4 * 0.9 = 0.36."""
    if prefix == ():
        return [0.0, 0.0, 0.6, 0.4]
    if prefix == (2,):
        return [0.0, 0.3, 0.4, 0.3]
    if prefix == (3,):
        return [0.0, 0.9, 0.05, 0.05]
    return [0.0, 1.0, 0.0, 0.0]


def run_beam(table, batch=1, max_len=5, **kwargs):
    return beam_search(
        make_step(table),
        reorder,
        initial_state(batch),
        torch.full((batch,), BOS),
        EOS,
        torch.full((batch,), max_len),
        **kwargs,
    )


def run_greedy(table, batch=1, max_len=5):
    return greedy_search(
        make_step(table),
        reorder,
        initial_state(batch),
        torch.full((batch,), BOS),
        EOS,
        torch.full((batch,), max_len),
    )


def brute_force(table, sentence, vocab, max_len, alpha=0.0, length_norm="gnmt"):
    """Best (tokens, score) over every sequence that ends in <eos> or stops at max_len."""
    best = (None, -math.inf)
    for length in range(1, max_len + 1):
        for body in itertools.product(range(2, vocab), repeat=length - 1):
            for last in range(1, vocab):
                tokens = (*body, last)
                if last != EOS and length != max_len:
                    continue  # only finished sequences, or cut at the maximum length
                log_prob = 0.0
                for i, token in enumerate(tokens):
                    log_prob += math.log(table(sentence, tokens[:i])[token])
                score = log_prob / length_penalty(length, alpha, length_norm)
                out = list(tokens[:-1]) if last == EOS else list(tokens)
                if score > best[1]:
                    best = (out, score)
    return best


def test_beam_finds_the_sequence_greedy_misses():
    greedy = run_greedy(greedy_trap)[0]
    assert greedy.tokens == [2, 2]
    assert greedy.log_prob == pytest.approx(math.log(0.6 * 0.4 * 1.0))
    best = run_beam(greedy_trap, beam_size=2)[0][0]
    assert best.tokens == [3]
    assert best.log_prob == pytest.approx(math.log(0.4 * 0.9))


def early_finish(sentence, prefix):
    """A <eos> (0.2475) finishes at step 2 while B A (0.45) and A A (0.3025) are still ahead
    and continue; both end below it: B A <eos> 0.225, A A <eos> 0.1815 (greedy's choice)."""
    table = {
        (): [0.0, 0.0, 0.55, 0.45],
        (2,): [0.0, 0.45, 0.55, 0.0],
        (2, 2): [0.0, 0.6, 0.0, 0.4],
        (3,): [0.0, 0.0, 1.0, 0.0],
        (3, 2): [0.0, 0.5, 0.2, 0.3],
    }
    return table.get(prefix, [0.0, 1.0, 0.0, 0.0])


def test_finished_hypotheses_are_kept_while_others_continue():
    assert run_greedy(early_finish)[0].tokens == [2, 2]
    hyps = run_beam(early_finish, beam_size=3, n_best=3)[0]
    assert [h.tokens for h in hyps] == [[2], [3, 2], [2, 2]]
    assert [math.exp(h.log_prob) for h in hyps] == pytest.approx([0.2475, 0.225, 0.1815])
    assert all(EOS not in h.tokens for h in hyps)


def test_beam_one_equals_greedy():
    table = random_table(vocab=6, seed=1)
    greedy = run_greedy(table, batch=8, max_len=7)
    beam = run_beam(table, batch=8, max_len=7, beam_size=1)
    for g, b in zip(greedy, beam):
        assert b[0].tokens == g.tokens
        assert b[0].log_prob == pytest.approx(g.log_prob)


@pytest.mark.parametrize("alpha,length_norm", [(0.0, "gnmt"), (1.0, "gnmt"), (0.0, "average")])
def test_wide_beam_is_exact(alpha, length_norm):
    vocab, max_len, batch = 4, 4, 3
    table = random_table(vocab, seed=7)
    results = run_beam(
        table, batch=batch, max_len=max_len, beam_size=64, alpha=alpha, length_norm=length_norm
    )
    for sentence in range(batch):
        tokens, score = brute_force(table, sentence, vocab, max_len, alpha, length_norm)
        assert results[sentence][0].tokens == tokens
        assert results[sentence][0].score == pytest.approx(score)


def test_batch_equals_one_sentence_at_a_time():
    table = random_table(vocab=7, seed=3)
    lengths = torch.tensor([2, 6, 4, 1, 5])
    step = make_step(table)
    batched = beam_search(
        step, reorder, initial_state(5), torch.full((5,), BOS), EOS, lengths, beam_size=3
    )
    for sentence in range(5):
        state = (torch.tensor([sentence]), torch.empty(1, 0, dtype=torch.long))
        alone = beam_search(
            step, reorder, state, torch.tensor([BOS]), EOS, lengths[sentence : sentence + 1], 3
        )
        assert batched[sentence][0] == alone[0][0]


def test_max_length_stops_a_sentence_that_never_ends():
    def never_ends(sentence, prefix):
        return [0.0, 0.0, 0.7, 0.3]  # <eos> has probability 0

    lengths = torch.tensor([3, 1, 5])
    greedy = greedy_search(
        make_step(never_ends), reorder, initial_state(3), torch.full((3,), BOS), EOS, lengths
    )
    assert [len(h.tokens) for h in greedy] == [3, 1, 5]
    beam = beam_search(
        make_step(never_ends), reorder, initial_state(3), torch.full((3,), BOS), EOS, lengths, 2
    )
    assert [h[0].tokens for h in beam] == [[2, 2, 2], [2], [2, 2, 2, 2, 2]]


def test_length_penalty_prefers_longer_output():
    # Without normalisation the short sequence wins; GNMT alpha=1 favours the long one.
    def table(sentence, prefix):
        if prefix == ():
            return [0.0, 0.5, 0.5, 0.0]
        if len(prefix) < 4:
            return [0.0, 0.1, 0.9, 0.0]
        return [0.0, 1.0, 0.0, 0.0]

    plain = run_beam(table, max_len=8, beam_size=4)[0][0]
    assert plain.tokens == []
    normalised = run_beam(table, max_len=8, beam_size=4, alpha=1.0)[0][0]
    assert normalised.tokens == [2, 2, 2, 2]


def test_max_target_lengths():
    assert max_target_lengths(torch.tensor([0, 4, 10]), 1.5, 5).tolist() == [5, 11, 20]
