"""Attentional encoder-decoder for translation.

Encoder: :class:`~nlpseq.models.encoder.RecurrentEncoder`, a bidirectional GRU/LSTM whose two
directions have ``hidden_size // 2`` units each, so its states have the decoder's size.
Decoder: a GRU/LSTM over the target embeddings, initialised from the encoder's final state,
followed by attention over all encoder states (Luong et al., 2015, without input feeding):

    h_t  = RNN(embed(y_{t-1}), h_{t-1})           # (B, T, H), one recurrent call in training
    a_t  = softmax(score(h_t, memory), masked)    # (B, T, S), exactly 0 at source padding
    c_t  = a_t @ memory                           # (B, T, H)
    o_t  = tanh(W [c_t; h_t])                     # (B, T, O)
    p_t  = softmax(U o_t)                         # (B, T, V), U tied to the target embedding

Because the attention does not feed back into the recurrence, teacher-forced training runs the
decoder as one call over the whole target and attention plus output layer as batched matrix
products; on a CPU this is many times faster than a Python loop over time steps. Scores:
``dot`` (h . m), ``general`` (h W m), ``bahdanau`` (v . tanh(W_q h + W_m m)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpseq import native
from nlpseq.batching import Batch
from nlpseq.config import key
from nlpseq.models.encoder import CELLS, Dropout, RecurrentEncoder, length_mask


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Bidirectional encoder, attentional decoder (the ``model`` section of translate
    pipelines)."""

    cell: Literal["lstm", "gru"] = key("gru", help="recurrent cell")
    embedding_dim: int = key(256, low=1, help="token embedding size")
    hidden_size: int = key(256, low=1, help="decoder units (even: each encoder direction "
                           "has half)")
    layers: int = key(1, low=1, help="stacked recurrent layers of encoder and decoder")
    dropout: float = key(0.2, low=0, high=1, high_open=True,
                         help="dropout between layers and on the attentional states")
    embedding_dropout: float = key(0.0, low=0, high=1, high_open=True,
                                   help="dropout on the token embeddings")
    attention: Literal["bahdanau", "general", "dot"] = key("general", help="attention score")
    teacher_forcing: float = key(1.0, low=0, high=1, help="probability of feeding the reference "
                                 "token (< 1: the model's own predictions too; slower)")
    tie_embeddings: bool = key(True, help="decoder input embedding = output projection")
    share_embeddings: bool = key(True, help="one embedding for source and target (needs "
                                 "tokenizer.joint)")
    label_smoothing: float = key(0.1, low=0, high=1, high_open=True,
                                 help="training: label smoothing of the target distribution")
    bf16: bool = key(False, help="bfloat16 autocast inside the model, on CPU too (fast only "
                     "with AMX/AVX512-BF16)")
    max_length_a: float = key(1.5, low=0, help="decoding: at most a * source length + b tokens")
    max_length_b: int = key(10, low=0, help="decoding: at most a * source length + b tokens")
    length_penalty: float = key(0.6, low=0, help="decoding: GNMT length penalty alpha "
                                "(0 = none)")
    dev_beam: int = key(1, low=1, help="beam size for dev BLEU during training (1 = greedy)")


@dataclass
class TranslationBatch(Batch):
    """Source ids with lengths, and target ids ``<bos> y_1 .. y_n <eos>`` right-padded."""

    source: Tensor  # (B, S) long
    source_lengths: Tensor  # (B,) long, >= 1
    target: Tensor  # (B, T + 1) long; input is target[:, :-1], output target[:, 1:]
    pad_id: int = 0

    @property
    def num_tokens(self) -> int:
        """Target tokens predicted (``<eos>`` included)."""
        return int((self.target[:, 1:] != self.pad_id).sum())


class DecoderState(NamedTuple):
    """What one decoder step needs; every field has batch as dim 0 except ``hidden``/``cell``
    (layers, N, H), as in ``nn.GRU``/``nn.LSTM``."""

    hidden: Tensor  # (L, N, H)
    cell: Tensor | None  # (L, N, H) for LSTM, else None
    memory: Tensor  # (N, S, H) encoder states
    keys: Tensor  # (N, S, K) memory projected for the score function
    mask: Tensor  # (N, S) bool, True at real source tokens
    #: (N,) the sentence each row decodes (None: row i decodes sentence i); rows of one
    #: sentence share memory, keys and mask
    source: Tensor | None = None


class Attention(nn.Module):
    """Score decoder states against encoder states; softmax over the real source tokens."""

    def __init__(self, kind: str, size: int):
        super().__init__()
        if kind not in ("dot", "general", "bahdanau"):
            raise ValueError(f"unknown attention {kind!r}; expected dot, general or bahdanau")
        self.kind = kind
        if kind == "general":
            self.key_proj = nn.Linear(size, size, bias=False)
        elif kind == "bahdanau":
            self.key_proj = nn.Linear(size, size, bias=False)
            self.query_proj = nn.Linear(size, size, bias=True)
            self.v = nn.Linear(size, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """Precompute the memory side of the score once per source: (B, S, H) -> (B, S, K)."""
        return memory if self.kind == "dot" else self.key_proj(memory)

    def forward(self, queries: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """queries (B, T, H), keys (B, S, K), mask (B, S) -> weights (B, T, S), rows sum to 1."""
        if self.kind == "bahdanau":
            query = self.query_proj(queries).unsqueeze(2)  # (B, T, 1, K)
            scores = self.v(torch.tanh(query + keys.unsqueeze(1))).squeeze(-1)  # (B, T, S)
        else:
            scores = torch.bmm(queries, keys.transpose(1, 2))  # (B, T, S)
        # -inf, not a large negative number: the weights at padding are then exactly 0.
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        return torch.softmax(scores.float(), dim=-1)  # fp32 even under autocast


class Seq2Seq(nn.Module):
    """Bidirectional recurrent encoder + attentional recurrent decoder (see module docstring)."""

    def __init__(
        self,
        config: Seq2SeqConfig,
        source_vocab_size: int,
        target_vocab_size: int,
        *,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
        share_source_embedding: bool = False,
    ):
        super().__init__()
        if config.hidden_size % 2:
            raise ValueError("hidden_size must be even (the encoder has two directions)")
        self.config = config
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.cell_type = config.cell
        self.layers = config.layers
        hidden = config.hidden_size
        self.encoder = RecurrentEncoder(
            source_vocab_size,
            config.embedding_dim,
            hidden // 2,
            cell=config.cell,
            layers=config.layers,
            bidirectional=True,
            dropout=config.dropout,
            embedding_dropout=config.embedding_dropout,
            padding_idx=pad_id,
        )
        if share_source_embedding:
            if source_vocab_size != target_vocab_size:
                raise ValueError("a shared source embedding needs one joint vocabulary")
            self.target_embedding = self.encoder.embedding
        else:
            self.target_embedding = nn.Embedding(
                target_vocab_size, config.embedding_dim, padding_idx=pad_id
            )
        states = 2 if config.cell == "lstm" else 1
        # The decoder's initial state(s) of every layer from the encoder's final state.
        self.bridge = nn.Linear(hidden, states * config.layers * hidden)
        self.decoder = CELLS[config.cell](
            config.embedding_dim,
            hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.attention = Attention(config.attention, hidden)
        # With tied embeddings the attentional state must have the embedding's size.
        output_size = config.embedding_dim if config.tie_embeddings else hidden
        self.combine = nn.Linear(2 * hidden, output_size, bias=False)
        self.output = nn.Linear(output_size, target_vocab_size)
        if config.tie_embeddings:
            self.output.weight = self.target_embedding.weight
        self.dropout = Dropout(config.dropout)
        self.embedding_dropout = Dropout(config.embedding_dropout)

    def _autocast(self) -> torch.autocast:
        """bfloat16 matrix products when ``config.bf16`` and the device computes them natively
        (CUDA, or a CPU with AVX512-BF16 / AMX); recurrent cells stay fp32."""
        return native.bf16_autocast(self.output.weight.device.type, self.config.bf16)

    # ---- encoder side -------------------------------------------------------------------

    def encode(self, source: Tensor, lengths: Tensor) -> DecoderState:
        """source (B, S), lengths (B,) >= 1 -> the decoder's initial :class:`DecoderState`."""
        with self._autocast():
            return self._encode(source, lengths)

    def _encode(self, source: Tensor, lengths: Tensor) -> DecoderState:
        memory, final = self.encoder(source, lengths)  # (B, S, H), (B, H)
        mask = length_mask(lengths.to(source.device), source.size(1))  # (B, S)
        batch, hidden = final.size(0), self.config.hidden_size
        # fp32 (autocast makes Linear outputs bf16): the recurrent state stays full precision.
        init = torch.tanh(self.bridge(final)).float()  # (B, states * L * H)
        init = init.view(batch, -1, self.layers, hidden).permute(1, 2, 0, 3)  # (states, L, B, H)
        init = init.contiguous()
        cell = init[1] if self.cell_type == "lstm" else None
        return DecoderState(init[0], cell, memory, self.attention.keys(memory), mask)

    # ---- decoder side -------------------------------------------------------------------

    def _recur(self, inputs: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Embed ``inputs`` (B, T) and run the decoder RNN: -> outputs (B, T, H), new state."""
        embedded = self.embedding_dropout(self.target_embedding(inputs))  # (B, T, E)
        if self.cell_type == "lstm":
            outputs, (hidden, cell) = self.decoder(embedded, (state.hidden, state.cell))
        else:
            outputs, hidden = self.decoder(embedded, state.hidden)
            cell = None
        return outputs, state._replace(hidden=hidden, cell=cell)

    def _attend(self, outputs: Tensor, state: DecoderState) -> tuple[Tensor, Tensor]:
        """Decoder outputs (B, T, H) -> attentional states (B, T, O) and weights (B, T, S)."""
        outputs = self.dropout(outputs)
        weights = self.attention(outputs, state.keys, state.mask)  # (B, T, S)
        context = torch.bmm(weights, state.memory)  # (B, T, H)
        attentional = torch.tanh(self.combine(torch.cat([context, outputs], dim=-1)))
        return self.dropout(attentional), weights  # (B, T, O), (B, T, S)

    def forward(self, batch: TranslationBatch, carry: None = None) -> tuple[Tensor, int, None]:
        """Teacher-forced training loss: (sum of token losses, target tokens, None).

        Label smoothing is applied in training mode only, so evaluation reports the true
        negative log-likelihood (and perplexity) per target token.
        """
        with self._autocast():
            return self._loss(batch)

    def _loss(self, batch: TranslationBatch) -> tuple[Tensor, int, None]:
        state = self._encode(batch.source, batch.source_lengths)
        inputs, targets = batch.target[:, :-1], batch.target[:, 1:]  # (B, T), (B, T)
        if self.training and self.config.teacher_forcing < 1.0:
            attentional = self._free_running(inputs, state)  # (B, T, O)
        else:
            outputs, _ = self._recur(inputs, state)  # (B, T, H)
            attentional, _ = self._attend(outputs, state)  # (B, T, O)
        real = targets != self.pad_id  # (B, T)
        # Project only real target positions: the output layer is the most expensive part.
        logits = self.output(attentional[real])  # (N, V)
        smoothing = self.config.label_smoothing if self.training else 0.0
        loss = F.cross_entropy(
            logits.float(), targets[real], reduction="sum", label_smoothing=smoothing
        )
        return loss, int(real.sum()), None

    def _free_running(self, inputs: Tensor, state: DecoderState) -> Tensor:
        """Teacher forcing with ratio < 1: a step loop that feeds the model's own (argmax)
        prediction instead of the reference with probability ``1 - teacher_forcing``."""
        steps = []
        token = inputs[:, 0]
        for t in range(inputs.size(1)):
            outputs, state = self._recur(token.unsqueeze(1), state)  # (B, 1, H)
            attentional, _ = self._attend(outputs, state)  # (B, 1, O)
            steps.append(attentional)
            if t + 1 < inputs.size(1):
                with torch.no_grad():
                    predicted = self.output(attentional[:, 0]).argmax(-1)  # (B,)
                use_gold = torch.rand(token.shape, device=token.device)
                use_gold = use_gold < self.config.teacher_forcing
                token = torch.where(use_gold, inputs[:, t + 1], predicted)
        return torch.cat(steps, dim=1)  # (B, T, O)

    def decode_step(
        self, tokens: Tensor, state: DecoderState
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """One step: tokens (N,) -> log-probabilities (N, V), attention (N, S), new state."""
        with self._autocast():
            outputs, state = self._recur(tokens.unsqueeze(1), state)  # (N, 1, H)
            attentional, weights = self._attend(outputs, state)  # (N, 1, O), (N, 1, S)
            logits = self.output(attentional[:, 0])  # (N, V)
        return torch.log_softmax(logits.float(), dim=-1), weights[:, 0].float(), state

    def step(
        self, tokens: Tensor, state: DecoderState
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """The step function for :mod:`nlpseq.decoding`: tokens (N,) -> (log-probabilities
        (N, V), new state, attention (N, S)), so hypotheses can carry their attention."""
        log_probs, weights, state = self.decode_step(tokens, state)
        return log_probs, state, weights

    @staticmethod
    def reorder_state(state: DecoderState, index: Tensor) -> DecoderState:
        """Select (and repeat) rows of a state: index (M,) -> a state with M rows. Where
        every row keeps its sentence (a beam search step), memory, keys and mask stay as
        they are: the same rows again."""
        hidden = state.hidden.index_select(1, index)
        cell = state.cell.index_select(1, index) if state.cell is not None else None
        source = state.source
        if source is None:
            source = torch.arange(state.memory.size(0), device=index.device)
        moved = source.index_select(0, index)
        if moved.size(0) == source.size(0) and torch.equal(moved, source):
            return state._replace(hidden=hidden, cell=cell, source=moved)
        return DecoderState(
            hidden, cell, state.memory.index_select(0, index), state.keys.index_select(0, index),
            state.mask.index_select(0, index), moved,
        )

    def attention_weights(self, source: Tensor, lengths: Tensor, target: Tensor) -> Tensor:
        """Attention of a given output (forced decoding): target ``<bos> y_1 .. y_n`` (B, T)
        -> weights (B, T, S); row t is the attention when predicting y_{t+1}."""
        with self._autocast():
            state = self._encode(source, lengths)
            outputs, _ = self._recur(target, state)
            _, weights = self._attend(outputs, state)
        return weights.float()
