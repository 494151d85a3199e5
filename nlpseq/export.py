"""``nlpseq export``: a trained run's model as ONNX graphs for ONNX Runtime.

What each task exports (``RUN_DIR/onnx/`` by default), always on padded tensors with lengths
(packed sequences do not export) and with dynamic batch and sequence axes:

* sentiment: ``classifier.onnx``: ids (B, T), lengths (B,) -> logits (B, C);
* ner: ``emissions.onnx``: the tagger up to its tag scores (B, T, K); the CRF's Viterbi
  decoding runs outside the graph (numpy);
* chargen: ``charlm.onnx``: tokens (B, T) and the recurrent state (hidden, and cell for
  LSTM: (layers, B, H)) -> logits (B, T, V) and the new state; one character is T = 1;
* translate: ``encoder.onnx`` (source, lengths -> initial decoder state, memory, attention
  keys) and ``decoder_step.onnx`` (one token per row and the state -> log-probabilities,
  new state, attention).

``meta.json`` records the SHA-256 of the weights the graphs came from, so graphs of other
weights are refused rather than silently used, and each graph's largest difference from the
torch model on the export example.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpseq import native
from nlpseq.checkpoint import read_json, write_json
from nlpseq.errors import NlpseqError
from nlpseq.models.encoder import length_mask

OPSET = 17
META = "meta.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_onnx(task: Any, run_dir: Path, weights: Path) -> Path:
    """``run_dir/onnx`` holding graphs of ``weights``: exported now when absent; graphs of
    other weights are an error (export again)."""
    folder = Path(run_dir) / "onnx"
    meta = folder / META
    if not meta.exists():
        print(f"export: writing ONNX graphs into {folder} (once)", file=sys.stderr)
        return export_onnx(task, folder, weights)
    record = read_json(meta)
    recorded = record.get("weights_sha256") if isinstance(record, dict) else None
    if recorded != sha256(weights):
        raise NlpseqError(f"the ONNX graphs were exported from other weights: run nlpseq "
                          f"export {run_dir} --format onnx again", meta)
    return folder


def export_onnx(task: Any, out_dir: str | Path, weights: Path) -> Path:
    """Export ``task.model`` (loaded from ``weights``) into ``out_dir``; each graph is checked
    with ``onnx.checker`` and compared with the torch model on the export example."""
    try:
        import onnx
        import onnxruntime  # noqa: F401  (the graphs are checked by running them)
    except ImportError:
        raise NlpseqError("ONNX export needs onnx and onnxruntime: pip install "
                          "'nlpseq[onnx]'") from None
    if task.name not in GRAPHS:
        raise NlpseqError(f"ONNX export takes {', '.join(GRAPHS)} runs, not a {task.name} run")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = task.model.eval()
    differences: dict[str, float] = {}
    with native.disabled(), _float32(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on shape-dependent Python branches
        for spec in GRAPHS[task.name](task):
            path = out / spec.name
            partial = path.with_suffix(".onnx.partial")
            torch.onnx.export(
                spec.module, spec.example, str(partial), dynamo=False, opset_version=OPSET,
                input_names=list(spec.inputs), output_names=list(spec.outputs),
                dynamic_axes={**spec.inputs, **spec.outputs},
            )
            onnx.checker.check_model(str(partial), full_check=True)
            os.replace(partial, path)
            differences[spec.name] = _difference(spec, path)
    meta = {
        "task": task.name, "weights_sha256": sha256(weights), "opset": OPSET,
        "graphs": sorted(differences), "max_abs_difference": differences,
        "torch": torch.__version__, "onnx": onnx.__version__,
    }
    write_json(out / META, meta)  # last and atomic: its presence marks a complete export
    del model
    return out


@contextlib.contextmanager
def _float32(model: nn.Module) -> Iterator[None]:
    """No bfloat16 autocast inside (``model.bf16``): the graphs compute in float32, which
    ONNX Runtime's CPU kernels implement."""
    if not hasattr(model, "_autocast"):
        yield
        return
    model._autocast = contextlib.nullcontext
    try:
        yield
    finally:
        del model._autocast  # the class's method again


class GraphSpec:
    """One graph to export: a module, its example inputs and named axes per input/output."""

    def __init__(self, name: str, module: nn.Module, example: tuple[Tensor, ...],
                 inputs: dict[str, dict[int, str]], outputs: dict[str, dict[int, str]]):
        # eval: the exporter restores the wrapper's mode afterwards, and a new module trains
        self.name, self.module, self.example = name, module.eval(), example
        self.inputs, self.outputs = inputs, outputs


def _difference(spec: GraphSpec, path: Path) -> float:
    """Largest absolute difference between ONNX Runtime and torch on the example."""
    from nlpseq.backends import OnnxGraph

    expected = spec.module(*spec.example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    feeds = dict(zip(spec.inputs, spec.example))
    got = OnnxGraph(path)(**feeds)
    worst = 0.0
    for name, value in zip(spec.outputs, expected):
        if value.dtype.is_floating_point:
            worst = max(worst, float((got[name] - value).abs().max()))
    return worst


def _ragged(vocab: int, lengths: list[int], seed: int = 0) -> tuple[Tensor, Tensor]:
    """Padded random ids (B, T) in [1, vocab) and their lengths: rows of different lengths,
    so that the traced encoder takes its general (padded) path."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, max(vocab, 2), (len(lengths), max(lengths)), generator=generator)
    lengths_t = torch.tensor(lengths)
    return ids.masked_fill(~length_mask(lengths_t, ids.size(1)), 0), lengths_t


BATCH, STEPS = {0: "batch"}, {0: "batch", 1: "steps"}


# --- sentiment -------------------------------------------------------------------------------
class ClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        return self.model.logits(ids, lengths)


def _classifier(task: Any) -> list[GraphSpec]:
    example = _ragged(task.trained_vocab_size, [5, 3, 1])
    return [GraphSpec("classifier.onnx", ClassifierGraph(task.model), example,
                      {"ids": STEPS, "lengths": BATCH}, {"logits": BATCH})]


# --- ner -------------------------------------------------------------------------------------
class CharConv(nn.Module):
    """The tagger's CharCNN as one Conv1d over the same weights: ONNX has no unfold of an
    axis whose size is only known at run time. ``chars (U, L)`` -> ``(U, F)``."""

    def __init__(self, cnn: nn.Module):
        super().__init__()
        self.embedding, self.window, self.kernel_size = cnn.embedding, cnn.window, cnn.kernel_size
        self.output_size = cnn.output_size

    def forward(self, chars: Tensor) -> Tensor:
        x = self.embedding(chars).transpose(1, 2)  # (U, C, L)
        # the window's inputs are (character, offset) pairs flattened: (F, C * k) -> (F, C, k)
        weight = self.window.weight.view(self.window.out_features, -1, self.kernel_size)
        h = F.conv1d(x, weight, self.window.bias, padding=self.kernel_size // 2)  # (U, F, L)
        h = h.transpose(1, 2).masked_fill((chars == 0).unsqueeze(2), float("-inf"))
        h = h.amax(dim=1)  # (U, F)
        return h.masked_fill(torch.isinf(h), 0.0)


class TaggerGraph(nn.Module):
    def __init__(self, model: nn.Module):
        from nlpseq.models.tagger import CharCNN

        super().__init__()
        self.model = copy.copy(model)  # shares every layer; only its character encoder differs
        self.model._modules = dict(model._modules)
        if isinstance(model.chars, CharCNN):
            self.model._modules["chars"] = CharConv(model.chars)

    def forward(self, ids: Tensor, lengths: Tensor, casing: Tensor, word_chars: Tensor,
                word_index: Tensor) -> Tensor:
        from nlpseq.models.tagger import TaggerBatch

        mask = length_mask(lengths, ids.size(1))
        return self.model.emissions(TaggerBatch(ids, lengths, mask, casing, word_chars,
                                                word_index))


def _tagger(task: Any) -> list[GraphSpec]:
    from nlpseq.corpora import TaggedData

    sentences = [["Export", "this", "sentence", "in", "Lisbon", "."], ["Two", "words"], ["x"]]
    data = TaggedData(sentences, None, [1, 2, 3], "<export>")
    batch = task._table(data, with_tags=False).collate([0, 1, 2])
    example = (batch.ids, batch.lengths, batch.casing, batch.word_chars, batch.word_index)
    inputs = {"ids": STEPS, "lengths": BATCH, "casing": STEPS,
              "word_chars": {0: "words", 1: "chars"}, "word_index": STEPS}
    return [GraphSpec("emissions.onnx", TaggerGraph(task.model), example, inputs,
                      {"emissions": STEPS})]


# --- chargen ---------------------------------------------------------------------------------
class CharLMGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, hidden: Tensor, cell: Tensor | None = None):
        state = (hidden, cell) if cell is not None else hidden
        logits, state = self.model.logits(tokens, state)  # (B, T, V)
        return (logits, *state) if cell is not None else (logits, state)


def _charlm(task: Any) -> list[GraphSpec]:
    model = task.model
    tokens = _ragged(model.vocab_size, [4, 4])[0]
    state = model.init_state(2)
    lstm = isinstance(state, tuple)
    example = (tokens, *state) if lstm else (tokens, state)
    rows = {1: "batch"}
    inputs = {"tokens": STEPS, "hidden": rows, **({"cell": rows} if lstm else {})}
    outputs = {"logits": STEPS, "hidden_out": rows, **({"cell_out": rows} if lstm else {})}
    return [GraphSpec("charlm.onnx", CharLMGraph(model), example, inputs, outputs)]


# --- translate -------------------------------------------------------------------------------
class EncoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, source: Tensor, lengths: Tensor):
        state = self.model.encode(source, lengths)
        cell = (state.cell,) if state.cell is not None else ()
        return (state.hidden, *cell, state.memory, state.keys)


class DecoderStepGraph(nn.Module):
    def __init__(self, model: nn.Module, lstm: bool):
        super().__init__()
        self.model, self.lstm = model, lstm

    def forward(self, tokens: Tensor, hidden: Tensor, *rest: Tensor):
        from nlpseq.models.seq2seq import DecoderState

        cell, (memory, keys, mask) = (rest[0], rest[1:]) if self.lstm else (None, rest)
        log_probs, attention, state = self.model.decode_step(
            tokens, DecoderState(hidden, cell, memory, keys, mask))
        cell_out = (state.cell,) if self.lstm else ()
        return (log_probs, state.hidden, *cell_out, attention)


def _seq2seq(task: Any) -> list[GraphSpec]:
    model = task.model
    lstm = model.cell_type == "lstm"
    source, lengths = _ragged(task.source_tokenizer.vocab_size, [6, 4, 2])
    state = model.encode(source, lengths)
    rows, memory_axes = {1: "rows"}, {0: "rows", 1: "source_steps"}
    cell = {"cell": rows} if lstm else {}
    encoder = GraphSpec(
        "encoder.onnx", EncoderGraph(model), (source, lengths),
        {"source": {0: "rows", 1: "source_steps"}, "lengths": {0: "rows"}},
        {"hidden": rows, **cell, "memory": memory_axes, "keys": memory_axes})
    tokens = torch.full((3,), model.bos_id, dtype=torch.long)
    example = (tokens, state.hidden, *((state.cell,) if lstm else ()), state.memory,
               state.keys, state.mask)
    step = GraphSpec(
        "decoder_step.onnx", DecoderStepGraph(model, lstm), example,
        {"tokens": {0: "rows"}, "hidden": rows, **cell, "memory": memory_axes,
         "keys": memory_axes, "mask": memory_axes},
        {"log_probs": {0: "rows"}, "hidden_out": rows,
         **({"cell_out": rows} if lstm else {}), "attention": memory_axes})
    return [encoder, step]


#: task name -> the graphs its model exports as
GRAPHS: dict[str, Callable[[Any], list[GraphSpec]]] = {
    "sentiment": _classifier,
    "ner": _tagger,
    "chargen": _charlm,
    "translate": _seq2seq,
}
