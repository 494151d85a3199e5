"""Character language model: embedding -> stacked unidirectional LSTM/GRU -> dropout -> vocab.

Trained statefully (truncated BPTT): ``forward`` takes the previous window's final hidden state as
``carry`` and returns this window's, detached, so the next window continues each lane where it
ended without back-propagating into the past. Decoding talks to the model through ``step`` and
``prime`` (see nlpseq/decoding.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpseq import native
from nlpseq.config import key
from nlpseq.models.encoder import CELLS

# LSTM: (h, c), each (layers, B, H); GRU: h (layers, B, H). Batch is dim 1, as in nn.LSTM.
HiddenState = Tensor | tuple[Tensor, Tensor]



@dataclass(frozen=True)
class CharLMConfig:
    """Unidirectional character language model, trained statefully (truncated BPTT):
    ``train.batch_size`` contiguous lanes read ``seq_len`` characters at a time (the ``model``
    section of chargen pipelines)."""

    cell: Literal["lstm", "gru"] = key("lstm", help="recurrent cell")
    embedding_dim: int = key(64, low=1, help="character embedding size")
    hidden_size: int = key(256, low=1, help="units of each recurrent layer")
    layers: int = key(2, low=1, help="stacked recurrent layers")
    dropout: float = key(0.0, low=0, high=1, high_open=True,
                         help="locked (variational) dropout after each recurrent layer")
    weight_drop: float = key(0.0, low=0, high=1, high_open=True,
                             help="DropConnect on each recurrent layer's hidden-to-hidden "
                             "weights, one mask per window (AWD-LSTM's weight drop)")
    tie_weights: bool = key(False, help="the output layer shares the embedding matrix")
    seq_len: int = key(100, low=1, help="characters per truncated-BPTT window")
    bf16: bool = key(False, help="bfloat16 autocast inside the model, on CPU too (fast only "
                     "with AMX/AVX512-BF16)")
    eval_context: int = key(100, low=0, help="validation: characters each lane reads before "
                            "its start, unscored")


class LMBatchLike(Protocol):
    inputs: Tensor  # (B, T) long
    targets: Tensor  # (B, T) long, -100 where there is nothing to predict
    num_tokens: int


def detach_state(state: HiddenState | None) -> HiddenState | None:
    """Cut the autograd history of a hidden state (truncated BPTT)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def state_batch_size(state: HiddenState) -> int:
    return (state[0] if isinstance(state, tuple) else state).size(1)


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask per sequence, shared by all time steps: x (B, T, H).

    Variational dropout (Gal & Ghahramani 2016), as AWD-LSTM uses between recurrent layers. It
    also draws T times fewer random numbers than nn.Dropout, which on a CPU costs about as much
    as the LSTM itself at this size.
    """
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1.0 - p) / (1.0 - p)  # (B, 1, H)
    return x * mask


class CharLM(nn.Module):
    """Embedding -> ``layers`` x LSTM/GRU(hidden_size) -> linear to the vocabulary.

    ``dropout`` is locked (variational) dropout on the output of every recurrent layer, the last
    one included. With ``tie_weights`` the output layer shares the embedding matrix; when
    hidden_size differs from embedding_dim a linear projection hidden -> embedding_dim is
    inserted before it. With ``bf16`` the training/evaluation forward runs under bfloat16
    autocast where the device computes it natively (CUDA, or a CPU with AVX512-BF16 / AMX;
    float32 elsewhere; weights and the loss stay float32). For decoding, ``prime`` runs in
    float32 and ``step`` through nlpseq's one-step kernel where it is available, with
    bfloat16 weights in its products where ``bf16`` applies.
    """

    def __init__(self, config: CharLMConfig, vocab_size: int):
        super().__init__()
        c = config
        if c.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be lstm or gru, got {c.cell!r}")
        if c.layers < 1 or not 0.0 <= c.dropout < 1.0:
            raise ValueError(f"need layers >= 1 and 0 <= dropout < 1, got {c.layers}, {c.dropout}")
        self.config = config
        self.vocab_size = vocab_size
        self.hidden_size = c.hidden_size
        self.layers = c.layers
        self.cell = c.cell
        self.dropout = c.dropout
        self.bf16 = c.bf16
        self.embedding = nn.Embedding(vocab_size, c.embedding_dim)
        # one module per layer, so that dropout between layers can be locked over time
        self.rnns = nn.ModuleList(
            CELLS[c.cell](c.embedding_dim if i == 0 else c.hidden_size, c.hidden_size,
                          batch_first=True)
            for i in range(c.layers)
        )
        self.projection: nn.Module | None = None
        output_in = c.hidden_size
        if c.tie_weights and c.hidden_size != c.embedding_dim:
            self.projection = nn.Linear(c.hidden_size, c.embedding_dim)
            output_in = c.embedding_dim
        self.output = nn.Linear(output_in, vocab_size)
        if c.tie_weights:
            self.output.weight = self.embedding.weight

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> HiddenState:
        """A zero hidden state for ``batch_size`` lanes."""
        zeros = torch.zeros(self.layers, batch_size, self.hidden_size, device=device)
        if self.cell == "lstm":
            return (zeros, zeros.clone())
        return zeros

    def recurrent(
        self, inputs: Tensor, state: HiddenState | None = None
    ) -> tuple[Tensor, HiddenState]:
        """inputs (B, T) long -> (top layer outputs after dropout (B, T, H), final state)."""
        x = self.embedding(inputs)  # (B, T, E)
        finals: list[HiddenState] = []
        for i, rnn in enumerate(self.rnns):
            layer_state = None
            if state is not None:  # this layer's slice, (1, B, H)
                if isinstance(state, tuple):
                    layer_state = (state[0][i : i + 1], state[1][i : i + 1])
                else:
                    layer_state = state[i : i + 1]
            replace = self._dropped_weights(rnn)
            if self._native(rnn, x, layer_state):
                x, final = native.lstm_stateful(rnn, x, layer_state, replace)  # (B, T, H)
            elif replace:
                x, final = torch.func.functional_call(rnn, replace, (x, layer_state))
            else:
                x, final = rnn(x, layer_state)  # (B, T, H)
            x = locked_dropout(x, self.dropout, self.training)
            finals.append(final)
        if self.cell == "lstm":
            return x, (torch.cat([h for h, _ in finals]), torch.cat([c for _, c in finals]))
        return x, torch.cat(finals)  # type: ignore[arg-type]

    def _dropped_weights(self, rnn: nn.Module) -> dict[str, Tensor]:
        """Weight drop: the hidden-to-hidden matrix with units' connections dropped, one mask
        for every lane and step of the window, so the recurrence itself is regularised
        (Merity et al., 2018); nothing outside training."""
        p = self.config.weight_drop
        if not self.training or p == 0.0:
            return {}
        return {"weight_hh_l0": F.dropout(rnn.weight_hh_l0, p, True)}

    @staticmethod
    def _native(rnn: nn.Module, x: Tensor, state: HiddenState | None) -> bool:
        """Whether nlpseq's LSTM kernel runs this layer: where it applies (float32 on CPU),
        with a carried state that needs no gradient (the kernel gives it none)."""
        carried = state if isinstance(state, tuple) else ()
        return native.usable(rnn, x) and not any(s.requires_grad for s in carried)

    def logits(
        self, inputs: Tensor, state: HiddenState | None = None
    ) -> tuple[Tensor, HiddenState]:
        """inputs (B, T) long -> (logits (B, T, V), final state)."""
        outputs, state = self.recurrent(inputs, state)  # (B, T, H)
        if self.projection is not None:
            outputs = self.projection(outputs)  # (B, T, E)
        return self.output(outputs), state  # (B, T, V)

    def forward(
        self, batch: LMBatchLike, carry: HiddenState | None = None
    ) -> tuple[Tensor, int, HiddenState]:
        """Summed next-character cross-entropy over the batch's targets.

        carry: the previous window's final state for the same lanes (None or a different batch
        size starts from zeros). Returns (loss_sum, number of targets, detached final state).
        """
        if carry is not None and state_batch_size(carry) != batch.inputs.size(0):
            carry = None
        if self.bf16:
            with native.bf16_autocast(batch.inputs.device.type, True):
                logits, state = self.logits(batch.inputs, carry)  # (B, T, V)
        else:  # no autocast context here, so that a caller's autocast still applies
            logits, state = self.logits(batch.inputs, carry)
        loss_sum = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            batch.targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        return loss_sum, batch.num_tokens, detach_state(state)  # type: ignore[return-value]

    def step(self, tokens: Tensor, state: HiddenState | None) -> tuple[Tensor, HiddenState]:
        """One decoding step: tokens (B,) long -> (logits (B, V), new state).

        Runs the layers' cells directly (nlpseq's one-step kernel, else torch.lstm_cell /
        gru_cell on the nn.LSTM/GRU weights): on CPU a one-step nn.LSTM call costs far more
        than the arithmetic (oneDNN setup). Sampling calls this once per character, so it
        skips what does nothing in evaluation mode (dropout, if training, is not locked here).
        """
        if state is None:
            state = self.init_state(tokens.size(0), tokens.device)
        x = F.embedding(tokens, self.embedding.weight)  # (B, E)
        hidden = state[0] if isinstance(state, tuple) else state  # (layers, B, H)
        fast = isinstance(state, tuple) and self._native_step(self.rnns[0], x)
        new_hidden, new_cells = [], []
        for i, rnn in enumerate(self.rnns):
            weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
            if fast:
                h, c = native.lstm_step(x, hidden[i], state[1][i], *self._packed(i, weights))
                new_cells.append(c)
            elif isinstance(state, tuple):
                h, c = torch.lstm_cell(x, (hidden[i], state[1][i]), *weights)
                new_cells.append(c)
            else:
                h = torch.gru_cell(x, hidden[i], *weights)
            new_hidden.append(h)
            x = F.dropout(h, self.dropout, True) if self.training else h  # (B, H)
        if self.projection is not None:
            x = self.projection(x)
        new_state = torch.stack(new_hidden)  # (layers, B, H)
        if isinstance(state, tuple):
            return self.output(x), (new_state, torch.stack(new_cells))
        return self.output(x), new_state

    def _native_step(self, rnn: nn.Module, x: Tensor) -> bool:
        """Whether nlpseq's one-step kernel runs this layer: where its layer kernel would, and
        only where no gradient is wanted (the step has none)."""
        wants_grad = torch.is_grad_enabled() and rnn.weight_hh_l0.requires_grad
        return not wants_grad and native.usable(rnn, x)

    def _packed(self, layer: int, weights: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Layer ``layer``'s ``[W_ih W_hh]`` and summed bias for :func:`native.lstm_step`,
        packed once and again only after the weights change: bfloat16 where the model
        computes in bfloat16 (it halves what each step reads), else float32."""
        bf16 = self.bf16 and native.bf16_native("cpu")
        key = (bf16, [w.data_ptr() for w in weights], [w._version for w in weights])
        cache = self.__dict__.setdefault("_packed_steps", {})
        if cache.get(layer, (None,))[0] != key:
            w_ih, w_hh, b_ih, b_hh = (w.detach() for w in weights)
            packed = torch.cat([w_ih, w_hh], dim=1).to(torch.bfloat16 if bf16 else torch.float32)
            cache[layer] = (key, packed.contiguous(), (b_ih + b_hh).contiguous())
        return cache[layer][1], cache[layer][2]

    def prime(self, tokens: Tensor, state: HiddenState | None) -> tuple[Tensor, HiddenState]:
        """Consume a whole prompt in one recurrent call per layer: tokens (B, T) -> (logits after
        the last token (B, V), state). Only the last position goes through the output layer."""
        outputs, state = self.recurrent(tokens, state)  # (B, T, H)
        last = outputs[:, -1]  # (B, H)
        if self.projection is not None:
            last = self.projection(last)
        return self.output(last), state  # (B, V)
