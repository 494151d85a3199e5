"""Attentional seq2seq: masking, padding invariance, training path == decoding path."""

from __future__ import annotations

import pytest
import torch

from nlpseq.batching import pad
from nlpseq.decoding import beam_search, greedy_search
from nlpseq.models.seq2seq import Seq2Seq, Seq2SeqConfig, TranslationBatch

PAD, BOS, EOS = 0, 2, 3
VOCAB = 20


def make_model(**overrides) -> Seq2Seq:
    torch.manual_seed(0)
    values = dict(embedding_dim=12, hidden_size=16, dropout=0.0, label_smoothing=0.0)
    values.update(overrides)
    config = Seq2SeqConfig(**values)
    return Seq2Seq(config, VOCAB, VOCAB + 3, pad_id=PAD, bos_id=BOS, eos_id=EOS).eval()


def make_batch(sources, targets) -> TranslationBatch:
    source, lengths = pad(sources, PAD)
    target, _ = pad([[BOS, *t, EOS] for t in targets], PAD)
    return TranslationBatch(source, lengths, target)


SOURCES = [[5, 6, 7, 8, 9, 3], [10, 11, 3], [12, 3], [4, 5, 6, 7, 3]]
TARGETS = [[4, 5, 6], [7, 8, 9, 10, 11, 12], [13], [14, 15]]
KINDS = [
    dict(attention="dot"),
    dict(attention="general"),
    dict(attention="bahdanau"),
    dict(attention="general", cell="lstm", layers=2),
    dict(attention="dot", tie_embeddings=False),
]


@pytest.mark.parametrize("options", [*KINDS, dict(attention="bahdanau", bf16=True)])
def test_attention_is_zero_on_padding_and_rows_sum_to_one(options):
    model = make_model(**options)
    batch = make_batch(SOURCES, TARGETS)
    with torch.no_grad():
        weights = model.attention_weights(batch.source, batch.source_lengths, batch.target)
    assert weights.shape == (4, batch.target.size(1), batch.source.size(1))
    for row, length in enumerate(batch.source_lengths.tolist()):
        assert torch.all(weights[row, :, length:] == 0.0)  # exactly zero, not just small
        assert torch.all(weights[row, :, :length] > 0.0)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-6)


@pytest.mark.parametrize("options", KINDS)
def test_padding_never_changes_a_sentence(options):
    model = make_model(**options)
    batch = make_batch(SOURCES, TARGETS)
    with torch.no_grad():
        together = model.encode(batch.source, batch.source_lengths)
        loss_together, count, _ = model(batch)
        loss_alone = 0.0
        for row, (source, target) in enumerate(zip(SOURCES, TARGETS)):
            single = make_batch([source], [target])
            alone = model.encode(single.source, single.source_lengths)
            length = len(source)
            assert torch.allclose(alone.memory[0], together.memory[row, :length], atol=1e-6)
            assert torch.allclose(alone.hidden[:, 0], together.hidden[:, row], atol=1e-6)
            loss_alone += float(model(single)[0])
    assert count == sum(len(t) + 1 for t in TARGETS)
    assert float(loss_together) == pytest.approx(loss_alone, rel=1e-5)


@pytest.mark.parametrize("options", KINDS)
def test_teacher_forced_loss_equals_step_by_step_decoding(options):
    model = make_model(**options)
    batch = make_batch(SOURCES, TARGETS)
    with torch.no_grad():
        loss, count, carry = model(batch)
        state = model.encode(batch.source, batch.source_lengths)
        total = 0.0
        for t in range(batch.target.size(1) - 1):
            log_probs, weights, state = model.decode_step(batch.target[:, t], state)
            gold = batch.target[:, t + 1]
            real = gold != PAD
            total -= float(log_probs[real].gather(1, gold[real].unsqueeze(1)).sum())
            assert weights.shape == batch.source.shape
    assert carry is None
    assert float(loss) == pytest.approx(total, rel=1e-5)


def test_label_smoothing_only_in_training():
    model = make_model(label_smoothing=0.2)
    plain = make_model(label_smoothing=0.0)
    batch = make_batch(SOURCES, TARGETS)
    with torch.no_grad():
        assert float(model(batch)[0]) == pytest.approx(float(plain(batch)[0]))
        model.train()
        assert float(model(batch)[0]) != pytest.approx(float(plain(batch)[0]))


def test_tied_and_shared_embeddings():
    model = make_model(tie_embeddings=True)
    assert model.output.weight is model.target_embedding.weight
    config = Seq2SeqConfig(embedding_dim=8, hidden_size=8)
    shared = Seq2Seq(config, VOCAB, VOCAB, share_source_embedding=True)
    assert shared.target_embedding is shared.encoder.embedding
    assert shared.output.weight is shared.encoder.embedding.weight


def test_teacher_forcing_below_one_trains():
    """The step loop that teacher forcing < 1 runs, fed the reference at every step (a ratio
    just under one: no draw of this seed picks the model's token), gives the batched
    teacher-forced loss and gradients; at ratio 0 it feeds the model's own tokens."""
    batch = make_batch(SOURCES, TARGETS)
    results = []
    for ratio in (1.0, 1 - 1e-6, 0.0):
        model = make_model(teacher_forcing=ratio).train()
        torch.manual_seed(1)
        loss, count, _ = model(batch)
        loss.backward()
        assert count == batch.num_tokens
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (forced, forced_grads), (looped, looped_grads), (own, _) = results
    torch.testing.assert_close(looped, forced)
    for got, want in zip(looped_grads, forced_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert abs(float(own) - float(forced)) > 1e-3


def test_search_runs_on_the_model():
    model = make_model()
    batch = make_batch(SOURCES, TARGETS)
    with torch.no_grad():
        state = model.encode(batch.source, batch.source_lengths)
        bos = torch.full((4,), BOS)
        limits = torch.full((4,), 6)
        greedy = greedy_search(model.step, model.reorder_state, state, bos, EOS, limits)
        beam = beam_search(model.step, model.reorder_state, state, bos, EOS, limits, beam_size=1)
    assert [g.tokens for g in greedy] == [b[0].tokens for b in beam]
    assert all(len(g.tokens) <= 6 for g in greedy)


def test_reordering_within_sentences_keeps_what_they_share():
    """A beam step moves rows within their sentence: memory, keys and mask stay the same
    tensors. Expanding to beams or dropping a sentence selects them, as in a plain copy."""
    model = make_model(cell="lstm")
    batch = make_batch(SOURCES, TARGETS)
    with torch.no_grad():
        state = model.encode(batch.source, batch.source_lengths)
    beams = model.reorder_state(state, torch.arange(4).repeat_interleave(3))  # (12 rows)
    assert beams.memory.size(0) == 12 and torch.equal(beams.memory[3], state.memory[1])
    assert beams.source.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    within = torch.tensor([2, 0, 0, 3, 5, 4, 6, 6, 7, 11, 9, 9])
    step = model.reorder_state(beams, within)
    assert step.memory is beams.memory and step.keys is beams.keys and step.mask is beams.mask
    assert torch.equal(step.hidden, beams.hidden[:, within])
    assert torch.equal(step.cell, beams.cell[:, within])
    for row, source_row in enumerate(within.tolist()):  # the same content a copy would have
        assert torch.equal(step.memory[row], beams.memory[source_row])
    dropped = model.reorder_state(step, torch.tensor([0, 1, 2, 9, 10, 11]))
    assert dropped.source.tolist() == [0, 0, 0, 3, 3, 3]
    assert torch.equal(dropped.memory[4], state.memory[3])
    assert torch.equal(dropped.mask[1], state.mask[0])
