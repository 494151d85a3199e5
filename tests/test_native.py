"""nlpseq's native CPU LSTM layer: same outputs and gradients as torch's LSTM on packed
sequences, padding-safe, used by the encoder, and a clean fallback where it cannot be built."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nlpseq import native
from nlpseq.batching import TokenStore
from nlpseq.models.encoder import RecurrentEncoder


def packed_reference(
    rnn: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, _) = rnn(packed)
    out = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0]
    return out, torch.cat(list(h_n), dim=-1)  # (B, T, D*H), (B, D*H)


@pytest.mark.native
@pytest.mark.parametrize("bidirectional, shape, threads, hidden, order", [
    *itertools.product([True, False], [(6, 7), (1, 1), (3, 1), (4, 12), (17, 5)], [1, 2],
                       [7, 19], ["random"]),
    # sorted batches, as nlpseq makes them: each step's products skip the finished rows
    *itertools.product([True, False], [(17, 9)], [1, 2], [7], ["descending", "ascending"]),
])
def test_matches_torch_lstm_outputs_and_gradients(bidirectional, shape, threads, hidden, order):
    batch, steps = shape
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(batch * 100 + steps)
        rnn = nn.LSTM(9, hidden, batch_first=True, bidirectional=bidirectional)
        x = torch.randn(batch, steps, 9, requires_grad=True)
        lengths = torch.randint(1, steps + 1, (batch,))
        lengths[0] = steps
        if order != "random":
            lengths = lengths.sort(descending=order == "descending").values
        out, final = native.lstm_layer(rnn, x, lengths)
        expected, expected_final = packed_reference(rnn, x, lengths)
        torch.testing.assert_close(out, expected, atol=2e-4, rtol=0)  # a flipped rounding at most
        torch.testing.assert_close(final, expected_final, atol=1e-5, rtol=0)
        inputs = [x, *rnn.parameters()]
        # Losses that weigh every output differently: on the outputs, the final states, both.
        weight, final_weight = torch.randn_like(out), torch.randn_like(final)
        for use_out, use_final in [(True, False), (False, True), (True, True)]:
            def loss(out, final, use_out=use_out, use_final=use_final):
                terms = [(out * weight).sum()] if use_out else []  # unused: its gradient is None
                return sum(terms + ([(final * final_weight).sum()] if use_final else []))

            got_out, got_final = native.lstm_layer(rnn, x, lengths)
            grads = torch.autograd.grad(loss(got_out, got_final), inputs)
            expected_grads = torch.autograd.grad(loss(expected, expected_final), inputs,
                                                 retain_graph=True)
            for got, want in zip(grads, expected_grads):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.native
@pytest.mark.parametrize("bidirectional, threads, with_state", list(itertools.product(
    [False, True], [1, 2], [False, True])))
def test_stateful_layer_matches_torch_lstm_with_initial_states(bidirectional, threads,
                                                               with_state):
    """A carried (detached) state as a stateful language model uses it: outputs, h_n, c_n and
    the gradients of the input and weights equal nn.LSTM's with the same initial state."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(3)
        rnn = nn.LSTM(5, 11, batch_first=True, bidirectional=bidirectional)
        directions = 2 if bidirectional else 1
        # 17 rows: with two threads one direction runs as two blocks of rows (8 and 9)
        x = torch.randn(17, 9, 5, requires_grad=True)
        state = (torch.randn(directions, 17, 11), torch.randn(directions, 17, 11))
        state = state if with_state else None
        out, (h_n, c_n) = native.lstm_stateful(rnn, x, state)
        expected, (expected_h, expected_c) = rnn(x, state)
        for got, want in [(out, expected), (h_n, expected_h), (c_n, expected_c)]:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert not c_n.requires_grad
        weight, h_weight = torch.randn_like(out), torch.randn_like(h_n)
        inputs = [x, *rnn.parameters()]
        grads = torch.autograd.grad((out * weight).sum() + (h_n * h_weight).sum(), inputs)
        expected_grads = torch.autograd.grad(
            (expected * weight).sum() + (expected_h * h_weight).sum(), inputs)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.native
@pytest.mark.parametrize("bidirectional, bf16, threads", list(itertools.product(
    [True, False], [False, True], [1, 2])))
def test_without_gradients_nothing_is_saved_and_the_outputs_are_the_same(
        bidirectional, bf16, threads):
    """Inference (no_grad) keeps none of the steps, with the outputs and final states (to
    float precision) of the layer that saves them for a backward pass (padding, initial
    states, every thread count)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(3)
        rnn = nn.LSTM(9, 19, batch_first=True, bidirectional=bidirectional)
        x = torch.randn(17, 6, 9)
        lengths = torch.tensor([6, 1, 3, 6, 2, 5, 4, 6, 1, 6, 6, 3, 2, 6, 5, 4, 6])
        directions = 2 if bidirectional else 1
        h0, c0 = torch.randn(17, directions * 19), torch.randn(17, directions * 19)
        weights = [[getattr(rnn, f"{name}_l0{suffix}").detach() for suffix in
                    ["", "_reverse"][:directions]]
                   for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        saved = torch.ops.nlpseq.lstm_layer_forward(x, lengths, *weights, h0, c0, bf16, True)
        kept = torch.ops.nlpseq.lstm_layer_forward(x, lengths, *weights, h0, c0, bf16, False)
        for a, b in zip(saved[:3], kept[:3]):  # BLAS may block rows of other strides apart
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert saved[4].numel() > 0 and all(t.numel() == 0 for t in kept[4:])
    finally:
        torch.set_num_threads(previous)


@pytest.mark.native
def test_the_layer_saves_its_steps_only_for_a_backward_pass(monkeypatch):
    calls = []
    forward = torch.ops.nlpseq.lstm_layer_forward

    def spy(*args):
        calls.append(args[-1])  # save
        return forward(*args)

    monkeypatch.setattr(torch.ops.nlpseq, "lstm_layer_forward", spy)
    rnn = nn.LSTM(4, 5, batch_first=True, bidirectional=True)
    x, lengths = torch.randn(3, 4, 4), torch.tensor([4, 2, 3])
    with torch.no_grad():
        quiet, _ = native.lstm_layer(rnn, x, lengths)
    trained, _ = native.lstm_layer(rnn, x, lengths)
    trained.sum().backward()
    assert calls == [False, True]
    torch.testing.assert_close(quiet, trained.detach(), rtol=0, atol=1e-6)


@pytest.mark.native
def test_stateful_layer_refuses_a_state_that_wants_a_gradient():
    rnn = nn.LSTM(2, 3, batch_first=True)
    h0 = torch.zeros(1, 1, 3, requires_grad=True)
    with pytest.raises(ValueError, match="detach"):
        native.lstm_stateful(rnn, torch.zeros(1, 2, 2), (h0, torch.zeros(1, 1, 3)))


@pytest.mark.native
def test_matches_torch_lstm_without_torchs_blas_symbol():
    """NLPSEQ_TORCH_BLAS=0: the kernel's products go through at::mm, as on a torch build
    that exports no BLAS; the comparison above runs again in a fresh process."""
    test = f"{__file__}::test_matches_torch_lstm_outputs_and_gradients"
    # CI set: the conftest policy fails a test whose kernel is missing, so no skip passes.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        env={**os.environ, "NLPSEQ_TORCH_BLAS": "0", "CI": "true"}, capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "48 passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-3000:]


@pytest.mark.native
def test_activations_are_exact_to_float_precision():
    """The kernel's own exp/sigmoid/tanh, seen through one step with zero recurrent weights."""
    rnn = nn.LSTM(1, 1, batch_first=True)
    with torch.no_grad():
        for p in rnn.parameters():
            p.zero_()
        rnn.weight_ih_l0.fill_(1.0)  # every gate's pre-activation is x
    x = torch.linspace(-30, 30, 2001).view(-1, 1, 1)
    out, _ = native.lstm_layer(rnn, x, torch.ones(len(x), dtype=torch.long))
    s = torch.sigmoid(x.double())
    expected = s * torch.tanh(s * torch.tanh(x.double()))  # o * tanh(i * g), f * c0 = 0
    torch.testing.assert_close(out.double(), expected, atol=2e-7, rtol=0)


@pytest.mark.native
@pytest.mark.parametrize("layers", [1, 2])
def test_encoder_gives_the_same_with_and_without_the_kernel(monkeypatch, layers):
    torch.manual_seed(0)
    model = RecurrentEncoder(20, 6, 5, cell="lstm", layers=layers).eval()
    batch = TokenStore([[5, 6, 7], [8, 9, 10, 11, 12, 13, 4], [4], [9, 9, 8, 7, 6]]).collate(
        range(4))
    with torch.no_grad():
        outputs, final = model(batch.ids, batch.lengths)
        monkeypatch.setitem(native._state, "ok", False)
        assert not native.usable(model.layers[0], torch.zeros(1, 1, 6))
        torch_outputs, torch_final = model(batch.ids, batch.lengths)
    torch.testing.assert_close(outputs, torch_outputs, atol=1e-5, rtol=0)
    torch.testing.assert_close(final, torch_final, atol=1e-5, rtol=0)


def test_used_only_where_it_applies():
    lstm, x = nn.LSTM(3, 4, batch_first=True), torch.zeros(2, 3, 3)
    assert not native.usable(nn.GRU(3, 4, batch_first=True), x)
    assert not native.usable(nn.LSTM(3, 4, num_layers=2, batch_first=True), x)
    assert not native.usable(lstm, x.bfloat16())
    with torch.autocast("cpu", dtype=torch.float16):
        assert not native.usable(lstm, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bfloat16 products, float32 elsewhere
        assert native.usable(lstm, x) == native.load()
    assert native.usable(lstm, x) == native.load()


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("NLPSEQ_NATIVE", raising=False)
    monkeypatch.setenv("NLPSEQ_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    source = tmp_path / "lstm.cpp"
    source.write_text("int main() { return 0; }\n")
    with pytest.raises(RuntimeError, match="no-such-compiler"):
        native.build((source,))
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "build", lambda: (_ for _ in ()).throw(RuntimeError("no g++")))
    with pytest.warns(RuntimeWarning, match="no g++"):
        assert native.load() is False
    assert native.load() is False  # decided once: no second warning, no second attempt


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("NLPSEQ_NATIVE", "0")
    assert native.load() is False
    assert not native.usable(nn.LSTM(3, 4, batch_first=True), torch.zeros(1, 2, 3))


@pytest.mark.native
@pytest.mark.parametrize("p", [0.0, 0.25, 0.9])
def test_dropout_mask_is_a_function_of_seed_and_position(p):
    scale = torch.tensor(65536 / (65536 - round(p * 65536))).item()  # in float32
    mask = native.dropout_mask(torch.empty(1001, 7), p, seed=3)  # 7007: a partial last word
    assert mask.shape == (1001, 7) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, scale}
    assert abs((mask == 0).float().mean().item() - p) < 0.02
    # The same seed gives the same draws whatever the shape; another seed, others.
    flat = native.dropout_mask(torch.empty(7007), p, seed=3)
    assert torch.equal(flat, mask.view(-1))
    if p > 0:
        assert not torch.equal(native.dropout_mask(torch.empty(7007), p, seed=4), flat)
        # The four draws that share one hash are not correlated with each other.
        lanes = (flat[:7004] == 0).float().view(-1, 4)
        assert abs(lanes[:, 0].mul(lanes[:, 1]).mean().item() - p * p) < 0.03


@pytest.mark.parametrize("ci, code, message", [
    ("", 0, "SKIPPED [1] tests/conftest.py:"),
    ("true", 1, "native kernels unavailable under CI: NLPSEQ_NATIVE=0 turns them off"),
])
def test_a_missing_kernel_skips_with_the_reason_or_fails_under_ci(ci, code, message):
    """The conftest policy, seen from a fresh pytest process where the kernels are off."""
    test = f"{__file__}::test_activations_are_exact_to_float_precision"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
        env={**os.environ, "NLPSEQ_NATIVE": "0", "CI": ci}, capture_output=True, text=True,
    )
    assert done.returncode == code, done.stdout[-3000:]
    assert message in done.stdout, done.stdout[-3000:]
    assert "NLPSEQ_NATIVE=0 turns them off" in done.stdout


class _Bf16Product(torch.autograd.Function):
    """a @ b as the kernel forms it under bfloat16 autocast: a bfloat16 product of rounded
    operands (torch's own, float32 accumulation, a bfloat16 result); the gradients are such
    products too, of the incoming gradient rounded."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _product(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return _product(grad, b.T), _product(a.T, grad)


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.bfloat16() @ b.bfloat16()).float()


def _reference_bf16_lstm(rnn: nn.LSTM, x: torch.Tensor, state) -> torch.Tensor:
    """One direction, step by step, each step's product [x_t h] [W_ih W_hh]^T as above."""
    w = torch.cat([rnn.weight_ih_l0, rnn.weight_hh_l0], dim=1)  # (4H, I+H)
    bias = rnn.bias_ih_l0 + rnn.bias_hh_l0
    h, c = state[0][0], state[1][0]
    outputs = []
    for t in range(x.size(1)):
        gates = _Bf16Product.apply(torch.cat([x[:, t], h], dim=1), w.T) + bias
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


@pytest.mark.native
@pytest.mark.parametrize("threads, blas", [(1, "1"), (2, "1"), (2, "0")])
def test_bf16_products_match_rounded_operands(monkeypatch, threads, blas):
    """Under bfloat16 autocast the kernel's products are bfloat16 products (with or without
    torch's BLAS symbol, the latter checked in a fresh process): outputs and gradients equal
    a reference that forms the same products, and differ from the float32 layer's."""
    if blas == "0":
        test = f"{__file__}::test_bf16_products_match_rounded_operands[2-1]"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
            env={**os.environ, "NLPSEQ_TORCH_BLAS": "0", "CI": "true"}, capture_output=True,
            text=True)
        assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:]
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(5)
        rnn = nn.LSTM(6, 16, batch_first=True)
        x = torch.randn(17, 8, 6, requires_grad=True)
        state = (torch.randn(1, 17, 16), torch.randn(1, 17, 16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = native.lstm_stateful(rnn, x, state)
        assert out.dtype == torch.float32
        expected = _reference_bf16_lstm(rnn, x, state)
        torch.testing.assert_close(out, expected, atol=2e-4, rtol=0)  # a flipped rounding at most
        float32_out, _ = native.lstm_stateful(rnn, x, state)
        assert (out - float32_out).abs().max() > 1e-3  # the products really were rounded
        weight = torch.randn_like(out)
        inputs = [x, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0]
        grads = torch.autograd.grad((out * weight).sum(), inputs)
        # The kernel rounds each whole weight gradient once (one product over all steps);
        # the reference rounds each step's: they agree to bfloat16's precision, as a whole.
        expected_grads = torch.autograd.grad((expected * weight).sum(), inputs)
        for got, want in zip(grads, expected_grads):
            assert (got - want).norm() <= 1e-2 * want.norm()
    finally:
        torch.set_num_threads(previous)


@pytest.mark.native
@pytest.mark.parametrize("rows, inputs, hidden, threads", [
    (1, 9, 7, 1), (1, 64, 130, 2), (3, 33, 70, 2), (2, 5, 200, 1)])
def test_step_matches_lstm_cell(rows, inputs, hidden, threads):
    """The decoding step equals torch.lstm_cell in float32, and a reference with the same
    bfloat16 products when its packed weights are bfloat16; hidden sizes that are not a
    multiple of the vector width and splits across threads included."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(rows * 1000 + hidden)
        x, h, c = torch.randn(rows, inputs), torch.randn(rows, hidden), torch.randn(rows, hidden)
        w_ih, w_hh = torch.randn(4 * hidden, inputs) / 3, torch.randn(4 * hidden, hidden) / 3
        b_ih, b_hh = torch.randn(4 * hidden), torch.randn(4 * hidden)
        w, bias = torch.cat([w_ih, w_hh], dim=1), b_ih + b_hh
        got_h, got_c = native.lstm_step(x, h, c, w, bias)
        want_h, want_c = torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        torch.testing.assert_close(got_h, want_h, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_c, want_c, atol=1e-5, rtol=1e-5)
        got_h, got_c = native.lstm_step(x, h, c, w.bfloat16(), bias)
        rounded = torch.cat([x, h], dim=1).bfloat16().double() @ w.T.bfloat16().double()
        i, f, g, o = (rounded.float() + bias).chunk(4, dim=1)  # float32 sums, not rounded
        want_c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        want_h = torch.sigmoid(o) * torch.tanh(want_c)
        torch.testing.assert_close(got_h, want_h, atol=1e-4, rtol=0)
        torch.testing.assert_close(got_c, want_c, atol=1e-4, rtol=1e-4)
        assert (got_c - torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)[1]).abs().max() > 1e-4
    finally:
        torch.set_num_threads(previous)


@pytest.mark.native
@pytest.mark.parametrize("bf16", [False, True])
def test_char_lm_steps_through_the_kernel_and_repacks_changed_weights(bf16, monkeypatch):
    """CharLM.step with the kernel gives torch.lstm_cell's logits (to bfloat16 precision where
    the model computes in bfloat16), and packs its weights again after they change in place."""
    from nlpseq.models.charlm import CharLM, CharLMConfig

    monkeypatch.setattr(native, "bf16_native", lambda _device: True)
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(embedding_dim=8, hidden_size=24, layers=2, bf16=bf16), 11).eval()
    tokens = torch.tensor([3, 5])

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            fast, _ = model.step(tokens, None)
            with native.disabled():
                plain, _ = model.step(tokens, None)
        return fast, plain

    fast, plain = both()
    torch.testing.assert_close(fast, plain, atol=2e-2 if bf16 else 1e-5, rtol=0)
    if bf16:
        assert (fast - plain).abs().max() > 1e-6
    with torch.no_grad():
        model.rnns[1].weight_ih_l0.mul_(-2.0)
    fast_after, plain_after = both()
    assert (plain_after - plain).abs().max() > 1e-2
    torch.testing.assert_close(fast_after, plain_after, atol=2e-2 if bf16 else 1e-5, rtol=0)
    grads = model.step(tokens, None)[0]
    assert grads.requires_grad  # a step that wants a gradient runs torch's cell
