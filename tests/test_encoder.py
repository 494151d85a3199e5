"""The recurrent encoder: padding never leaks into outputs or final states."""

from __future__ import annotations

import itertools

import pytest
import torch

from nlpseq import native
from nlpseq.batching import TextBatch, TokenStore
from nlpseq.models.classifier import POOLINGS, ClassifierConfig, TextClassifier
from nlpseq.models.encoder import Dropout, RecurrentEncoder, masked_max, reverse_padded

SENTENCES = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 4], [4], [9, 9, 8, 7, 6]]


def one_batch(sentences: list[list[int]], labels: list[int] | None = None) -> TextBatch:
    """All ``sentences`` as one padded batch."""
    label_tensor = torch.tensor(labels) if labels is not None else None
    return TokenStore(sentences).collate(range(len(sentences)), label_tensor)


def encoder(cell: str, layers: int, bidirectional: bool) -> RecurrentEncoder:
    torch.manual_seed(0)
    model = RecurrentEncoder(20, 6, 5, cell=cell, layers=layers, bidirectional=bidirectional,
                             dropout=0.3, embedding_dropout=0.3)
    return model.eval()


@pytest.mark.parametrize("cell, layers, bidirectional",
                         list(itertools.product(["lstm", "gru", "rnn"], [1, 2], [True, False])))
def test_padding_never_leaks(cell, layers, bidirectional):
    model = encoder(cell, layers, bidirectional)
    batch = one_batch(SENTENCES)
    with torch.no_grad():
        outputs, final = model(batch.ids, batch.lengths)
        directions = 2 if bidirectional else 1
        assert outputs.shape == (4, 7, 5 * directions) and final.shape == (4, 5 * directions)
        assert (outputs[~batch.mask] == 0).all()
        for row, sentence in enumerate(SENTENCES):
            alone = one_batch([sentence])
            out_alone, final_alone = model(alone.ids, alone.lengths)
            n = len(sentence)
            torch.testing.assert_close(outputs[row, :n], out_alone[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(final[row], final_alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_final_state_is_real_last_token(bidirectional):
    """Forward half = output at the last real token; backward half = output at position 0."""
    model = encoder("gru", 2, bidirectional)
    batch = one_batch(SENTENCES)
    with torch.no_grad():
        outputs, final = model(batch.ids, batch.lengths)
    for row, sentence in enumerate(SENTENCES):
        torch.testing.assert_close(final[row, :5], outputs[row, len(sentence) - 1, :5])
        if bidirectional:
            torch.testing.assert_close(final[row, 5:], outputs[row, 0, 5:])


def reference(model: RecurrentEncoder, sentence: list[int]) -> torch.Tensor:
    """Brute force for one unpadded sentence: each direction of each layer as a separate
    unidirectional torch RNN (weights copied), the backward one over the reversed words."""
    x = model.embedding(torch.tensor([sentence]))  # (1, T, E)
    cls = type(model.layers[0])
    for rnn in model.layers:
        outputs = []
        for suffix, flip in [("", False), ("_reverse", True)][: 1 + rnn.bidirectional]:
            single = cls(rnn.input_size, rnn.hidden_size, batch_first=True)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(single, f"{name}_l0").data.copy_(getattr(rnn, f"{name}_l0{suffix}"))
            out, _ = single(x.flip(1) if flip else x)
            outputs.append(out.flip(1) if flip else out)
        x = torch.cat(outputs, dim=-1)
    return x[0]


@pytest.mark.parametrize("cell, layers, bidirectional",
                         list(itertools.product(["lstm", "gru", "rnn"], [1, 2], [True, False])))
def test_outputs_match_brute_force(cell, layers, bidirectional):
    model = encoder(cell, layers, bidirectional)
    batch = one_batch(SENTENCES)
    with torch.no_grad():
        outputs, _ = model(batch.ids, batch.lengths)
        for row, sentence in enumerate(SENTENCES):
            expected = reference(model, sentence)
            torch.testing.assert_close(outputs[row, : len(sentence)], expected, atol=1e-5, rtol=0)
            # An equal-length batch (no padding) takes the fused path: same outputs.
            same, _ = model(torch.tensor([sentence] * 2), torch.tensor([len(sentence)] * 2))
            torch.testing.assert_close(same[1], expected, atol=1e-5, rtol=0)


def test_reverse_padded():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]])
    out = reverse_padded(x, torch.tensor([3, 2, 4]))
    assert out.tolist() == [[3, 2, 1, 0], [5, 4, 0, 0], [9, 8, 7, 6]]


def test_pretrained_and_frozen_embeddings():
    matrix = torch.randn(20, 6)
    model = RecurrentEncoder(20, 6, 5, pretrained=matrix, freeze_embeddings=True)
    assert torch.equal(model.embedding.weight, matrix)
    assert not model.embedding.weight.requires_grad
    assert RecurrentEncoder(20, 6, 5, pretrained=matrix).embedding.weight.requires_grad


@pytest.mark.parametrize("pooling", POOLINGS)
def test_classifier_scores_do_not_depend_on_padding(pooling):
    torch.manual_seed(0)
    config = ClassifierConfig(embedding_dim=6, hidden_size=5, pooling=pooling)
    model = TextClassifier(config, 20, 3).eval()
    batch = one_batch(SENTENCES, labels=[0, 1, 2, 0])
    with torch.no_grad():
        logits = model.logits(batch.ids, batch.lengths)
        assert logits.shape == (4, 3)
        for row, sentence in enumerate(SENTENCES):
            alone = one_batch([sentence])
            torch.testing.assert_close(logits[row], model.logits(alone.ids, alone.lengths)[0],
                                       atol=1e-5, rtol=0)
        loss, count, carry = model(batch)
    assert count == 4 and carry is None
    expected = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="sum")
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("freeze", [False, True])
def test_adversarial_loss_adds_the_loss_at_the_worst_nearby_vectors(freeze):
    torch.manual_seed(0)
    matrix = torch.randn(20, 6)
    config = ClassifierConfig(embedding_dim=6, hidden_size=5, pooling="max-mean", dropout=0.0,
                              adversarial=0.5)
    model = TextClassifier(config, 20, 3, pretrained=matrix, freeze_embeddings=freeze)
    batch = one_batch(SENTENCES, labels=[0, 1, 2, 0])
    model.train()
    total, count, _ = model(batch)
    clean = torch.nn.functional.cross_entropy(
        model.logits(batch.ids, batch.lengths), batch.labels, reduction="sum")
    adversarial = total - clean
    assert count == 4
    # Moving each text's vectors by norm 0.5 along the loss gradient raises the loss; a
    # random direction of the same norm raises it less.
    assert adversarial > clean
    vectors = model.encoder.embed(batch.ids)
    noise = torch.randn_like(vectors) * batch.mask.unsqueeze(-1)
    noise = 0.5 * noise / noise.flatten(1).norm(dim=1)[:, None, None]
    with torch.no_grad():
        random = torch.nn.functional.cross_entropy(
            model.logits(batch.ids, batch.lengths, vectors + noise), batch.labels, reduction="sum")
    assert adversarial > random
    # The output layer learns from both terms: the clean loss's gradient plus that of the loss
    # at the shifted vectors, the shift (rebuilt here) held constant.
    fixed = model.encoder.embed(batch.ids).detach().requires_grad_()
    clean_again = torch.nn.functional.cross_entropy(
        model.logits(batch.ids, batch.lengths, fixed), batch.labels, reduction="sum")
    (towards,) = torch.autograd.grad(clean_again, fixed, retain_graph=True)
    towards = towards * batch.mask.unsqueeze(-1)
    shift = 0.5 * towards / towards.flatten(1).norm(dim=1)[:, None, None]
    shifted = torch.nn.functional.cross_entropy(
        model.logits(batch.ids, batch.lengths, fixed + shift), batch.labels, reduction="sum")
    (expected,) = torch.autograd.grad(clean_again + shifted, model.output.weight)
    total.backward()
    torch.testing.assert_close(model.output.weight.grad, expected)
    assert (model.encoder.embedding.weight.grad is None) == freeze
    # Evaluation is unchanged: the plain loss.
    model.eval()
    with torch.no_grad():
        loss, _, _ = model(batch)
    torch.testing.assert_close(loss, clean.detach())


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("kernel", [pytest.param("native", marks=pytest.mark.native), "numpy"])
def test_dropout_keeps_the_expected_share_unbiased_and_seeded(monkeypatch, p, kernel):
    if kernel == "numpy":
        monkeypatch.setitem(native._state, "ok", False)
    layer = Dropout(p)
    x = torch.ones(200, 500)
    torch.manual_seed(0)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 65536 / (65536 - round(p * 65536))))
    torch.manual_seed(0)
    assert torch.equal(layer(x), y)
    assert not torch.equal(layer(x), y)  # a fresh mask each call
    layer.eval()
    assert layer(x) is x
    x.requires_grad_()
    layer.train()
    torch.manual_seed(1)
    out = layer(x)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # d out / d x is the scaled mask


def test_masked_max_equals_masked_fill_then_max_with_its_gradients():
    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(0)) - 3  # mostly < 0
    lengths = torch.tensor([6, 3, 1, 0])
    mask = (torch.arange(6) < lengths.unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = masked_max(ours, mask)
    expected = theirs.masked_fill(~mask, float("-inf")).amax(dim=1)
    assert torch.equal(got, expected)
    assert torch.equal(got[3], torch.full((5,), float("-inf")))  # no position: -inf
    got[:3].sum().backward()
    expected[:3].sum().backward()
    assert torch.equal(ours.grad, theirs.grad)
