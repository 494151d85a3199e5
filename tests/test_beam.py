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


def reference_beam(table, sentence, vocab, beam_size, max_len, alpha=0.0, length_norm="gnmt"):
    """The search :class:`BeamSearch` documents, written out in plain Python for one sentence:
    finished hypotheses as (score, log_prob, tokens), best first."""
    alive = [(0.0, [])]  # (log_prob, tokens) of the unfinished beams
    finished = []
    for length in range(1, max_len + 1):
        ranked = sorted(
            ((log_prob + math.log(p), prefix, token) for log_prob, prefix in alive
             for token, p in enumerate(table(sentence, tuple(prefix))) if p > 0),
            key=lambda c: -c[0],
        )[: 2 * beam_size]
        penalty = length_penalty(length, alpha, length_norm)
        if length == max_len:  # finished as they are, best first, until beam_size are done
            take = max(1, beam_size - len(finished))
            for log_prob, prefix, token in ranked[:take]:
                tokens = prefix if token == EOS else [*prefix, token]
                finished.append((log_prob / penalty, log_prob, tokens))
            break
        survivors = []
        for log_prob, prefix, token in ranked:
            if token == EOS:
                finished.append((log_prob / penalty, log_prob, prefix))
            else:
                survivors.append((log_prob, [*prefix, token]))
                if len(survivors) == beam_size:
                    break
        if not survivors:
            break
        if finished:
            best_done, best_alive = max(f[0] for f in finished), survivors[0][0]
            bound = best_alive / length_penalty(max_len, alpha, length_norm)
            now = best_alive / penalty
            if best_done >= bound or (len(finished) >= beam_size and best_done >= now):
                break
        alive = survivors
    return sorted(finished, key=lambda f: -f[0])


@pytest.mark.parametrize("beam_size,alpha,length_norm",
                         [(1, 0.0, "gnmt"), (2, 0.0, "gnmt"), (3, 0.6, "gnmt"),
                          (4, 1.0, "gnmt"), (3, 0.0, "average"), (5, 0.0, "none")])
def test_tensor_beam_equals_plain_python_reference(beam_size, alpha, length_norm):
    vocab, batch = 5, 6
    table = random_table(vocab, seed=11)
    lengths = torch.tensor([1, 2, 6, 4, 7, 5])
    results = beam_search(
        make_step(table), reorder, initial_state(batch), torch.full((batch,), BOS), EOS, lengths,
        beam_size, alpha, length_norm, n_best=3,
    )
    for sentence, hyps in enumerate(results):
        expected = reference_beam(table, sentence, vocab, beam_size, int(lengths[sentence]),
                                  alpha, length_norm)[:3]
        assert [h.tokens for h in hyps] == [tokens for _, _, tokens in expected]
        assert [h.log_prob for h in hyps] == pytest.approx([lp for _, lp, _ in expected])
        assert [h.score for h in hyps] == pytest.approx([s for s, _, _ in expected])


def test_known_best_sequence_behind_a_greedy_prefix():
    # Greedy: B (0.7), A (0.45), <eos> (0.6) = 0.189. Best: A (0.3), B (1.0), <eos> (0.9) = 0.27.
    def table(sentence, prefix):
        rows = {(): [0.0, 0.0, 0.3, 0.7], (2,): [0.0, 0.0, 0.0, 1.0],
                (2, 3): [0.0, 0.9, 0.06, 0.04], (3,): [0.0, 0.2, 0.45, 0.35]}
        return rows.get(prefix, [0.0, 0.6, 0.25, 0.15])

    greedy = run_greedy(table)[0]
    assert greedy.tokens == [3, 2]
    assert greedy.log_prob == pytest.approx(math.log(0.7 * 0.45 * 0.6))
    best = run_beam(table, beam_size=2, n_best=2)[0]
    assert [h.tokens for h in best] == [[2, 3], [3, 2]]
    assert [h.log_prob for h in best] == pytest.approx([math.log(0.27), math.log(0.189)])


@pytest.mark.parametrize("eos_bias", [0.0, 0.3])  # outputs cut at the limit / ending in <eos>
def test_attention_travels_with_each_hypothesis(eos_bias):
    from nlpseq.batching import pad
    from nlpseq.models.seq2seq import Seq2Seq, Seq2SeqConfig

    torch.manual_seed(0)
    config = Seq2SeqConfig(embedding_dim=12, hidden_size=16, dropout=0.0, cell="lstm")
    model = Seq2Seq(config, 20, 23, pad_id=0, bos_id=2, eos_id=3).eval()
    with torch.no_grad():
        model.output.bias[3] += eos_bias
    source, lengths = pad([[5, 6, 7, 8, 9, 3], [10, 11, 3], [12, 3]], 0)
    limits = torch.tensor([9, 4, 6])
    with torch.no_grad():
        state = model.encode(source, lengths)
        bos = torch.full((3,), 2)
        greedy = greedy_search(model.step, model.reorder_state, state, bos, 3, limits,
                               attention=True)
        plain = greedy_search(model.step, model.reorder_state, state, bos, 3, limits)
        beam = beam_search(model.step, model.reorder_state, state, bos, 3, limits, 3, 1.0,
                           n_best=3, attention=True)
    assert greedy == plain and plain[0].attention is None
    for row, hyps in [*enumerate([g] for g in greedy), *enumerate(beam)]:
        for hyp in hyps:
            steps = hyp.attention.size(0)  # one per output token, and one for <eos> if any
            assert steps == len(hyp.tokens) + 1 or steps == len(hyp.tokens) == int(limits[row])
            # forced decoding of the same output gives the same weights, step by step
            target = torch.tensor([[2, *hyp.tokens]])
            with torch.no_grad():
                forced = model.attention_weights(source[row : row + 1],
                                                 lengths[row : row + 1], target)[0]
            assert torch.allclose(hyp.attention, forced[:steps], atol=1e-5)
