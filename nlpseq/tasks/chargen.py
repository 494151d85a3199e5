"""Character-level text generation: one text stream -> stateful LSTM/GRU language model.

Training reads the stream in ``train.batch_size`` contiguous lanes, ``model.seq_len``
characters at a time, carrying the hidden state from one window to the next (truncated BPTT).
Validation is the last ``data.val_fraction`` of the text (or ``data.dev``), scored by summed
cross-entropy over every character. Generation (greedy, temperature, top-k, top-p) goes through
nlpseq.decoding over the model's step function.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nlpseq.checkpoint import save_objects
from nlpseq.corpora import iter_text, read_text
from nlpseq.decoding import check_length, check_sampling_options, generate
from nlpseq.errors import NlpseqError
from nlpseq.lmdata import LMBatch, evaluate_stream, lm_windows
from nlpseq.models.charlm import CharLM, CharLMConfig
from nlpseq.models.encoder import CELLS
from nlpseq.runtime import log_stderr
from nlpseq.tasks.base import Log, Task, text_list
from nlpseq.tokenize import SPECIALS, UNK, TextTokenizer

TOKENIZER = "tokenizer.json"


class CharCodec:
    """Characters <-> ids of a character-level TextTokenizer, vectorised for long texts."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        vocabulary = tokenizer.vocabulary()
        #: id -> character ("" for the special tokens, which never appear in text)
        self.chars = ["" if i < len(SPECIALS) else token for i, token in enumerate(vocabulary)]
        pairs = sorted((ord(c), i) for i, c in enumerate(self.chars) if len(c) == 1)
        self._codepoints = np.array([p for p, _ in pairs], dtype=np.int64)
        self._ids = np.array([i for _, i in pairs], dtype=np.int64)
        self.index = {c: i for i, c in enumerate(self.chars) if c}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def normalize(self, text: str) -> str:
        normalizer = self.tokenizer.tokenizer.normalizer
        return normalizer.normalize_str(text) if normalizer is not None else text

    def encode(self, text: str) -> tuple[Tensor, list[str]]:
        """One id per character (UNK for characters outside the vocabulary) and the sorted
        unknown characters. Equivalent to the tokenizer's encoding, one id per character, but
        literal special-token strings such as "<unk>" in the text stay plain characters."""
        text = self.normalize(text)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if len(self._codepoints) == 0:
            return torch.full((len(codes),), UNK, dtype=torch.long), sorted(set(text))
        where = np.searchsorted(self._codepoints, codes).clip(max=len(self._codepoints) - 1)
        known = self._codepoints[where] == codes
        ids = np.where(known, self._ids[where], UNK)
        unknown = sorted({chr(c) for c in np.unique(codes[~known])})
        return torch.from_numpy(ids), unknown

    def encode_pieces(self, pieces: Iterable[str]) -> tuple[Tensor, list[str]]:
        """:meth:`encode` over the pieces of one text, the ids held in the narrowest integer
        type that holds the vocabulary (one byte a character up to 256 characters)."""
        size = self.vocab_size
        dtype = torch.uint8 if size <= 256 else torch.int16 if size <= 1 << 15 else torch.int32
        parts, unknown = [], set()
        for piece in pieces:
            ids, missing = self.encode(piece)
            parts.append(ids.to(dtype))
            unknown.update(missing)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype), sorted(unknown)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def describe(chars: list[str], limit: int = 20) -> str:
    """Characters for a message, escaped so that newlines and spaces are visible."""
    shown = ", ".join(json.dumps(c, ensure_ascii=False) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


#: characters scored per step of :meth:`ChargenTask.predict` (the state carries across)
PREDICT_WINDOW = 4096


class ChargenTask(Task):
    """A character language model trained on one text; generates text from a prompt."""

    name = "chargen"
    ModelConfig = CharLMConfig
    formats = ("text",)
    metrics = {"loss": False, "bpc": False, "perplexity": False}
    default_metric = "loss"

    commands = frozenset({"predict", "generate"})
    evaluate_options = ("dynamic_lr",)

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self.codec: CharCodec | None = None
        self.train_ids = torch.zeros(0, dtype=torch.long)
        self.val_ids = torch.zeros(0, dtype=torch.long)
        self.lanes = config.train.batch_size

    # --- data ----------------------------------------------------------------------------
    def prepare(self, log: Log, artifacts: Path | None = None) -> None:
        data, seq_len = self.config.data, self.config.model.seq_len
        if seq_len < 1 or self.config.train.batch_size < 1:
            raise NlpseqError("model.seq_len and train.batch_size must be >= 1", self.config.source)
        text = read_text(data.train)
        if data.limit:
            text = text[: data.limit]
        if data.dev:
            train_text, val_text, val_from = text, read_text(data.dev), data.dev
        else:
            if not 0.0 <= data.val_fraction < 1.0:
                raise NlpseqError(
                    f"data.val_fraction must be in [0, 1), got {data.val_fraction}",
                    self.config.source,
                )
            # split by position: the first (1 - val_fraction) trains, the rest validates
            n_train = int(len(text) * (1.0 - data.val_fraction))
            train_text, val_text = text[:n_train], text[n_train:]
            val_from = f"the last {data.val_fraction:.0%} of {data.train}"
        if len(train_text) < seq_len + 1:
            raise NlpseqError(
                f"the training text has {len(train_text)} characters, shorter than one window "
                f"(model.seq_len + 1 = {seq_len + 1})",
                data.train,
            )
        if artifacts is not None:
            self.load_artifacts(artifacts)
        else:
            tokenizer_config = dataclasses.replace(self.config.tokenizer, kind="char", max_length=0)
            tokenizer = TextTokenizer.train(train_text.splitlines(keepends=True), tokenizer_config)
            self.codec = CharCodec(tokenizer)
        self.train_ids, _ = self.codec.encode(train_text)
        self.val_ids, unknown = self.codec.encode(val_text)
        # every lane must hold at least one window
        self.lanes = min(self.config.train.batch_size, (len(self.train_ids) - 1) // seq_len)
        log(
            f"train: {len(self.train_ids):,} characters from {data.train}; vocabulary "
            f"{self.codec.vocab_size} ({self.codec.vocab_size - len(SPECIALS)} characters)"
        )
        if self.lanes < self.config.train.batch_size:
            log(
                f"train: {self.lanes} lanes instead of train.batch_size "
                f"{self.config.train.batch_size}: the text is too short for more"
            )
        if len(self.val_ids) < 2:
            raise NlpseqError(
                "no validation text: set data.val_fraction > 0 or data.dev", self.config.source
            )
        log(
            f"dev: {len(self.val_ids) - 1:,} characters to predict from {val_from}"
            + (f"; unknown characters: {describe(unknown)}" if unknown else "")
        )

    def save_artifacts(self, directory: Path) -> None:
        save_objects(directory, {TOKENIZER: self.codec.tokenizer})

    def load_artifacts(self, directory: Path) -> None:
        self.codec = CharCodec(TextTokenizer.load(directory / TOKENIZER))

    # --- model ---------------------------------------------------------------------------
    def build_model(self, log: Log, pretrained: bool = True) -> nn.Module:
        return CharLM(self.config.model, self.codec.vocab_size)

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[LMBatch]:
        """Windows of this rank's lanes, in reading order (never shuffled: the state carries).
        Under DDP every rank gets its own ``lanes`` contiguous lanes of the text."""
        lanes = self.lanes if world_size == 1 else self.lanes // world_size
        windows = lm_windows(self.train_ids, lanes * world_size, self.config.model.seq_len)
        if world_size == 1:
            return windows
        own = slice(rank * lanes, (rank + 1) * lanes)
        return [
            LMBatch(w.inputs[own], w.targets[own], int((w.targets[own] >= 0).sum()))
            for w in windows
        ]

    # --- evaluation ----------------------------------------------------------------------
    def _score(self, model: nn.Module, ids: Tensor) -> dict[str, Any]:
        return evaluate_stream(
            model,
            ids,
            self.config.eval.batch_size,
            self.config.model.seq_len,
            self.device,
            context=self.config.model.eval_context,
        )

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        return self._score(model, self.val_ids)

    def evaluate_files(self, paths: list[str], dynamic_lr: float | None = None
                       ) -> dict[str, Any]:
        """loss (nats/char), bpc, perplexity and n_chars over a whole text file, read a piece
        at a time into ids of one or two bytes a character; each window of the lanes is
        gathered from them when it is scored.

        With ``dynamic_lr`` > 0 (default ``eval.dynamic_lr``) the model adapts to the text as
        it reads it, as one stream (see :func:`nlpseq.lmdata.evaluate_stream`); the loaded
        weights are unchanged afterwards."""
        if len(paths) != 1:
            raise NlpseqError("chargen evaluation takes one text file")
        dynamic_lr = self.config.eval.dynamic_lr if dynamic_lr is None else dynamic_lr
        if not math.isfinite(dynamic_lr) or dynamic_lr < 0:
            raise NlpseqError(f"dynamic_lr must be a finite number >= 0, got {dynamic_lr}")
        if dynamic_lr > 0:
            self._check_adaptable()
        ids, unknown = self.codec.encode_pieces(iter_text(paths[0]))
        if len(ids) < 2:
            raise NlpseqError("the text needs at least 2 characters to score", paths[0])
        if unknown:
            log_stderr(f"{paths[0]}: characters not seen in training: {describe(unknown)}")
        if dynamic_lr > 0:
            return evaluate_stream(self.model, ids, 1, self.config.eval.dynamic_window,
                                   self.device, adapt_lr=dynamic_lr)
        return self._score(self.model, ids)

    def _check_adaptable(self) -> None:
        """Dynamic evaluation needs gradients through every layer: not where a backend runs
        the model through ONNX Runtime or quantized int8 layers."""
        layers = getattr(self.model, "rnns", ())
        if not layers or not all(type(rnn) in CELLS.values() for rnn in layers):
            raise NlpseqError("dynamic evaluation (eval.dynamic_lr) adapts the model's weights, "
                              "which the onnx and int8 backends cannot: use the torch or bf16 "
                              "backend, or --dynamic-lr 0")

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Score each text on its own (from a fresh state): loss (nats/char), bpc, perplexity
        and n_chars. A text of fewer than 2 characters has no score: None in each figure."""
        out = []
        for text in text_list(texts, "predict"):
            ids, _ = self.codec.encode(text)
            if len(ids) < 2:
                out.append({"loss": None, "bpc": None, "perplexity": None, "n_chars": 0})
            else:
                # windows with the state carried: memory bounded on a long line
                out.append(evaluate_stream(self.model, ids, 1, PREDICT_WINDOW, self.device))
        return out

    def format_output(self, result: dict[str, Any], as_json: bool) -> str:
        """Bits per character (``nan`` where a line has none), or JSON (null: JSON has no
        NaN)."""
        if as_json:
            return json.dumps(result)
        return "nan" if result["bpc"] is None else f"{result['bpc']:.4f}"

    # --- generation ----------------------------------------------------------------------
    def _step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        logits, state = self.model.step(tokens, state)
        logits[:, : len(SPECIALS)] = float("-inf")  # never emit <pad>/<unk>/<bos>/<eos>
        return logits, state

    def _prime(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        logits, state = self.model.prime(tokens, state)
        logits[:, : len(SPECIALS)] = float("-inf")
        return logits, state

    def stream(
        self,
        prompt: str = "",
        length: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        warn: Log = log_stderr,
    ) -> Iterator[str]:
        """The characters that follow ``prompt``, one at a time (the prompt is not repeated).

        temperature 0 is greedy decoding; top_k / top_p (None = off) restrict sampling; the
        same seed and options give the same text. An empty prompt starts from a fresh state
        (after a newline, as at the start of a paragraph). Prompt characters unseen in
        training are reported through ``warn`` and read as the unknown character. Options are
        checked before anything is generated.
        """
        try:
            check_length(length)
            check_sampling_options(temperature, top_k, top_p)
        except ValueError as err:
            raise NlpseqError(str(err)) from None
        ids, unknown = self.codec.encode(prompt)
        if unknown:
            warn(f"prompt characters not seen in training (read as <unk>): {describe(unknown)}")
        if len(ids) == 0:
            start = self.codec.index.get("\n", len(SPECIALS))  # else the most frequent char
            ids = torch.tensor([start])
        self.model.eval()
        tokens = generate(
            self._step,
            ids.to(self.device),
            None,
            length,
            prime=self._prime,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        return (self.codec.chars[token] for token in tokens)

    def generate(
        self,
        prompt: str = "",
        length: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> str:
        """``prompt`` followed by ``length`` generated characters (see :meth:`stream`)."""
        pieces = self.stream(prompt, length, temperature, top_k, top_p, seed)
        return prompt + "".join(pieces)
