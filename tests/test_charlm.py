"""CharLM and truncated-BPTT data: lanes, windows, carried state, summed metrics, overfitting."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from nlpseq.decoding import generate
from nlpseq.lmdata import (
    IGNORE,
    LMBatch,
    evaluate_stream,
    iter_windows,
    lm_windows,
    make_lanes,
)
from nlpseq.metrics import LossCounts
from nlpseq.models.charlm import CharLM, CharLMConfig


def tiny_model(cell: str = "lstm", **kwargs) -> CharLM:
    torch.manual_seed(0)
    options = {"embedding_dim": 8, "hidden_size": 16, "layers": 2, "cell": cell, "dropout": 0.0}
    options.update(kwargs)
    return CharLM(CharLMConfig(**options), 11)


def test_lanes_and_windows_cover_every_target_once_in_order():
    stream = torch.arange(23)  # 22 targets; 3 lanes of ceil(22 / 3) = 8
    windows = lm_windows(stream, batch_size=3, seq_len=3)
    assert [w.inputs.shape for w in windows] == [(3, 3), (3, 3), (3, 2)]
    assert sum(w.num_tokens for w in windows) == 22
    inputs = torch.cat([w.inputs for w in windows], dim=1)  # (3, 8)
    targets = torch.cat([w.targets for w in windows], dim=1)
    for lane in range(3):
        expected = torch.arange(lane * 8, lane * 8 + 8)
        real = targets[lane] != IGNORE
        # each lane is a contiguous slice and each target is its input's successor
        assert torch.equal(inputs[lane][real], expected[expected < 22])
        assert torch.equal(targets[lane][real], inputs[lane][real] + 1)
    # carry continuity: window w + 1 of a lane starts where window w ended
    for before, after in itertools.pairwise(windows):
        real = after.targets[:, 0] != IGNORE
        assert torch.equal(after.inputs[real, 0], before.targets[real, -1])
    all_targets = targets[targets != IGNORE]
    assert sorted(all_targets.tolist()) == list(range(1, 23))


def test_context_lanes_read_history_before_scoring_each_target_once():
    stream = torch.arange(23)  # 22 targets, 3 lanes, 4 tokens of context: L = ceil(18 / 3) = 6
    inputs, targets = make_lanes(stream, batch_size=3, context=4)
    assert inputs.shape == (3, 10)
    for lane in range(3):
        # every lane is contiguous and reads as many tokens as the others
        assert torch.equal(inputs[lane], torch.arange(lane * 6, lane * 6 + 10))
    assert (targets[0] != IGNORE).all()  # the first lane has no history to warm up on
    assert (targets[1:, :4] == IGNORE).all() and (targets[1:, 4:] != IGNORE).all()
    scored = targets[targets != IGNORE]
    assert sorted(scored.tolist()) == list(range(1, 23))


def test_windows_of_a_narrow_stream_are_the_lanes_read_a_window_at_a_time():
    stream = torch.randint(0, 200, (47,), generator=torch.Generator().manual_seed(0))
    inputs, targets = make_lanes(stream.long(), batch_size=4, context=3)
    windows = list(iter_windows(stream.to(torch.uint8), batch_size=4, seq_len=5, context=3))
    assert all(w.inputs.dtype == w.targets.dtype == torch.long for w in windows)
    assert torch.equal(torch.cat([w.inputs for w in windows], dim=1), inputs)
    assert torch.equal(torch.cat([w.targets for w in windows], dim=1), targets)
    assert sum(w.num_tokens for w in windows) == 46


def test_windows_with_offset_start_later():
    windows = lm_windows(torch.arange(20), batch_size=2, seq_len=4, offset=3)
    assert windows[0].inputs[0, 0] == 3 and windows[0].targets[0, 0] == 4


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stateful_windows_equal_one_pass_per_lane(cell):
    """Carrying the state across windows gives exactly the loss of reading each lane whole."""
    model = tiny_model(cell).eval()
    stream = torch.randint(0, 11, (61,), generator=torch.Generator().manual_seed(0))
    metrics = evaluate_stream(model, stream, batch_size=4, seq_len=4)
    lane_len = math.ceil(60 / 4)
    total = 0.0
    with torch.no_grad():
        for lane in range(4):
            piece = stream[lane * lane_len : (lane + 1) * lane_len + 1]
            logits, _ = model.logits(piece[:-1].unsqueeze(0))
            total += float(F.cross_entropy(logits[0], piece[1:], reduction="sum"))
    assert metrics["n_chars"] == 60
    assert metrics["loss"] == pytest.approx(total / 60, rel=1e-5)
    # with context, a lane is read whole from its first context token, scoring only its part
    metrics = evaluate_stream(model, stream, batch_size=3, seq_len=4, context=5)
    inputs, targets = make_lanes(stream, 3, context=5)
    with torch.no_grad():
        logits, _ = model.logits(inputs)
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="sum")
    assert metrics["n_chars"] == 60
    assert metrics["loss"] == pytest.approx(float(expected) / 60, rel=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dynamic_evaluation_equals_scoring_then_sgd_by_hand(cell):
    """Each window is scored by the weights adapted to every window before it, never to
    itself; the model's weights are as before afterwards."""
    model = tiny_model(cell).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stream = torch.randint(0, 11, (23,), generator=torch.Generator().manual_seed(1))
    metrics = evaluate_stream(model, stream, batch_size=1, seq_len=5, adapt_lr=0.5)
    reference = tiny_model(cell)
    total, state = 0.0, None
    for start in range(0, 22, 5):
        piece = stream[start : start + 6]  # five inputs and their next characters
        logits, state = reference.logits(piece[:-1].unsqueeze(0), state)
        loss = F.cross_entropy(logits[0], piece[1:], reduction="sum")
        total += float(loss.detach())
        reference.zero_grad()
        (loss / (len(piece) - 1)).backward()
        with torch.no_grad():
            for param in reference.parameters():
                param -= 0.5 * param.grad
        state = tuple(s.detach() for s in state) if cell == "lstm" else state.detach()
    assert metrics["n_chars"] == 22
    assert metrics["loss"] == pytest.approx(total / 22, rel=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    static = evaluate_stream(model, stream, batch_size=1, seq_len=5)
    assert static["loss"] != pytest.approx(metrics["loss"], rel=1e-3)


def test_dynamic_evaluation_learns_a_repeated_text_and_stays_finite_on_noise():
    model = tiny_model().eval()
    phrase = torch.tensor([4, 5, 6, 7, 8, 4, 9, 10])
    repeated = phrase.repeat(100)
    static = evaluate_stream(model, repeated, batch_size=1, seq_len=8)
    adapted = evaluate_stream(model, repeated, batch_size=1, seq_len=8, adapt_lr=2.0)
    assert adapted["loss"] < 0.5 * static["loss"]
    # the special ids (never in a text the model trained on) as the whole text
    odd = evaluate_stream(model, torch.tensor([0, 1, 2, 3] * 50), 1, 10, adapt_lr=1.0)
    assert math.isfinite(odd["loss"])


def test_metrics_from_summed_loss_by_hand():
    # a model that predicts the uniform distribution: ln V nats, log2 V bits, perplexity V
    model = tiny_model()
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.zero_()
    metrics = evaluate_stream(model, torch.arange(11).repeat(3), batch_size=2, seq_len=5)
    assert metrics["n_chars"] == 32
    assert metrics["loss"] == pytest.approx(math.log(11), rel=1e-6)
    assert metrics["bpc"] == pytest.approx(math.log2(11), rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(11, rel=1e-5)
    # sums, never means of means: windows of 3 and 1 tokens with losses 3.0 and 2.0
    counts = LossCounts(bits_key="bpc", count_key="n_chars")
    counts.add(3.0, 3)
    counts.add(2.0, 1)
    assert counts.result() == {
        "loss": 1.25,
        "bpc": 1.25 / math.log(2),
        "perplexity": math.exp(1.25),
        "n_chars": 4,
    }


def test_forward_returns_sum_count_and_detached_carry():
    model = tiny_model()
    batch = lm_windows(torch.arange(40) % 11, batch_size=2, seq_len=5)[0]
    loss_sum, count, carry = model(batch)
    assert count == 10 and loss_sum.dim() == 0 and loss_sum.requires_grad
    h, c = carry
    assert h.shape == (2, 2, 16) and not h.requires_grad and not c.requires_grad
    logits, _ = model.logits(batch.inputs)
    expected = F.cross_entropy(logits.reshape(-1, 11), batch.targets.reshape(-1), reduction="sum")
    assert loss_sum.item() == pytest.approx(expected.item(), rel=1e-6)
    # a carry for another number of lanes is not applied (a fresh state is used instead)
    other = LMBatch(batch.inputs[:1], batch.targets[:1], 5)
    with torch.no_grad():
        assert float(model(other, carry)[0]) == pytest.approx(float(model(other)[0]))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_prime_equals_stepping(cell):
    model = tiny_model(cell, tie_weights=True).eval()  # 16 != 8: tying needs a projection
    assert model.output.weight is model.embedding.weight and model.projection is not None
    tokens = torch.tensor([[1, 5, 2, 9, 0]])
    with torch.no_grad():
        primed, primed_state = model.prime(tokens, None)
        state = model.init_state(1)
        for t in range(tokens.size(1)):
            stepped, state = model.step(tokens[:, t], state)
    assert primed.shape == (1, 11)
    assert torch.allclose(primed, stepped, atol=1e-6)
    if cell == "lstm":
        assert torch.allclose(primed_state[1], state[1], atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_overfits_a_string_and_reproduces_it_greedily(cell):
    text = "the cat sat on the mat, the dog sat on the log."
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    torch.manual_seed(0)
    config = CharLMConfig(embedding_dim=16, hidden_size=48, layers=1, cell=cell)
    model = CharLM(config, len(chars))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    batch = lm_windows(ids, batch_size=1, seq_len=len(text))[0]
    for _ in range(300):
        loss_sum, count, _ = model(batch)
        optimizer.zero_grad()
        (loss_sum / count).backward()
        optimizer.step()
    model.eval()
    prefix = 4
    out = generate(
        model.step, ids[:prefix], None, len(text) - prefix, prime=model.prime, temperature=0.0
    )
    assert text[:prefix] + "".join(chars[i] for i in out) == text


def test_bf16_forward_is_close_to_float32_and_keeps_float32_weights(monkeypatch):
    from nlpseq import native

    model = tiny_model()
    batch = lm_windows(torch.arange(60) % 11, batch_size=2, seq_len=8)[0]
    with torch.no_grad():
        full = model(batch)[0]
        model.bf16 = True
        half, _, carry = model(batch)
    assert half.dtype == torch.float32 and model.output.weight.dtype == torch.float32
    assert float(half) == pytest.approx(float(full), rel=2e-2)
    assert carry[0].shape == (2, 2, 16)
    if not native.bf16_native("cpu"):  # oneDNN's LSTM refuses emulated bf16: float32 runs
        assert float(half) == float(full)
    # where the CPU has no native bf16, the request must not reach autocast at all
    monkeypatch.setitem(native._state, "bf16", False)
    with torch.no_grad():
        assert float(model(batch)[0]) == float(full)




def _kernel_and_torch_runs(monkeypatch, **options):
    """Two carried windows through a tiny model with nlpseq's LSTM kernel, then without it
    (nn.LSTM): each run's losses, final cell state and parameter gradients."""
    from nlpseq import native

    windows = lm_windows(torch.arange(200) % 11, batch_size=3, seq_len=9)[:2]

    def run() -> tuple[list[float], torch.Tensor, list[torch.Tensor]]:
        model = tiny_model(dropout=0.0, **options)  # seeds: both runs draw the same masks
        model.train()
        losses, carry = [], None
        for batch in windows:
            loss, _, carry = model(batch, carry)
            losses.append(float(loss.detach()))
        loss.backward()
        return losses, carry[1], [p.grad for p in model.parameters()]

    with_kernel = run()
    monkeypatch.setitem(native._state, "ok", False)
    with_torch = run()
    assert with_kernel[0] == pytest.approx(with_torch[0], rel=1e-5)
    torch.testing.assert_close(with_kernel[1], with_torch[1], atol=1e-5, rtol=0)
    for got, want in zip(with_kernel[2], with_torch[2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    return with_torch


@pytest.mark.native
def test_native_kernel_and_torch_give_the_same_windows_and_gradients(monkeypatch):
    """Same losses, states and weight gradients through nlpseq's kernel and nn.LSTM."""
    _kernel_and_torch_runs(monkeypatch)


@pytest.mark.native
def test_weight_drop_in_the_kernel_equals_torch_with_the_same_masks(monkeypatch):
    """Weight drop through nlpseq's LSTM kernel and through nn.LSTM (functional_call), the
    same masks drawn: same losses, states and gradients; the dropped connections get no
    gradient."""
    grads = _kernel_and_torch_runs(monkeypatch, weight_drop=0.5)[2]
    for grad in (grads[2], grads[6]):  # the two layers' weight_hh_l0
        assert grad.shape == (64, 16)
        assert 0.3 < float((grad == 0).float().mean()) < 0.7  # about half dropped


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weight_drop_changes_training_only(cell):
    batch = lm_windows(torch.arange(60) % 11, batch_size=2, seq_len=8)[0]
    torch.manual_seed(0)
    plain = tiny_model(cell=cell)
    dropping = CharLM(dataclasses.replace(plain.config, weight_drop=0.5), 11)
    dropping.load_state_dict(plain.state_dict())
    for model in (plain, dropping):
        model.eval()
    with torch.no_grad():
        assert float(plain(batch)[0]) == float(dropping(batch)[0])
        plain.train()
        dropping.train()
        assert float(plain(batch)[0]) != float(dropping(batch)[0])
