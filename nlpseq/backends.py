"""Inference backends: the task's torch model, ONNX Runtime graphs, or int8 weights.

A backend only swaps the task's model object for one with the same methods the task calls
(``logits`` for sentiment, ``decode`` for NER, ``step``/``prime``/``forward`` for the
character LM, ``encode``/``step``/``forward`` for translation), so tokenization, batching by
length, decoding and output stay the task's own code for every backend.

* ``torch``: the model as trained (float32, nlpseq's native LSTM kernel on CPU).
* ``onnx``: graphs exported by :func:`nlpseq.export.export_onnx` into ``RUN_DIR/onnx/`` (made
  on first use when absent), run by ONNX Runtime's CPU execution provider.
* ``int8``: torch dynamic quantization (int8 weights, float activations) of the LSTM/GRU and
  linear layers, applied when the run is loaded from its float weights: nothing extra is
  stored, so an int8 model reloads from the ordinary run directory without pickle.
* ``bf16``: the torch model with its matrix products in bfloat16 (float32 accumulation,
  states and scores float32), on devices that compute bfloat16 natively (CUDA, or a CPU with
  AVX512-BF16 or AMX; elsewhere it would be emulated and slower, so it is refused). Nothing
  extra is stored either.
"""

from __future__ import annotations

import contextlib
import functools
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nlpseq import native
from nlpseq.errors import NlpseqError
from nlpseq.models.charlm import CharLM
from nlpseq.models.encoder import RecurrentEncoder, length_mask, reverse_padded
from nlpseq.models.seq2seq import DecoderState, Seq2Seq

BACKENDS = ("torch", "onnx", "int8", "bf16")
#: the tasks whose models the onnx and int8 backends run
TASKS = ("sentiment", "ner", "chargen", "translate")


def apply_backend(task: Any, backend: str, run_dir: Path, weights: Path) -> Any:
    """Swap ``task.model`` (loaded from ``weights`` of ``run_dir``) for ``backend``'s."""
    if backend not in BACKENDS:
        raise NlpseqError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return task
    if task.name not in TASKS:
        raise NlpseqError(f"the {backend} backend runs {', '.join(TASKS)} runs, not a "
                          f"{task.name} run")
    if backend == "bf16":
        task.model = to_bf16(task.model, task.device.type)
        task.model.eval()
        return task
    if task.device.type != "cpu":
        raise NlpseqError(f"the {backend} backend runs on the CPU: use --device cpu")
    if backend == "int8":
        task.model = quantize(task.model)
    else:
        from nlpseq.export import ensure_onnx

        folder = ensure_onnx(task, run_dir, weights)
        task.model = ONNX_ADAPTERS[type(task.model).__name__](task.model, folder)
    task.model.eval()
    return task


# --- bf16 ------------------------------------------------------------------------------------
def to_bf16(model: nn.Module, device_type: str) -> nn.Module:
    """``model`` computing its matrix products in bfloat16 on ``device_type``: the methods the
    tasks call for scores run under bfloat16 autocast and hand back float32."""
    if not native.bf16_native(device_type):
        raise NlpseqError(
            "the bf16 backend needs a device that computes bfloat16 natively (CUDA, or a CPU "
            "with AVX512-BF16 or AMX); this CPU would emulate it, slower than float32")
    if isinstance(model, CharLM):
        model.bf16 = True  # its forward autocasts; its decoding step packs bfloat16 weights
    elif isinstance(model, Seq2Seq):
        model._autocast = functools.partial(torch.autocast, device_type, dtype=torch.bfloat16)
    else:  # the classifier's logits, the tagger's emissions (its CRF runs in float32)
        for name in ("logits", "emissions"):
            if hasattr(model, name):
                setattr(model, name, _autocast_float32(getattr(model, name), device_type))
    return model


def _autocast_float32(method: Any, device_type: str) -> Any:
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = method(*args, **kwargs)
        return out.float() if isinstance(out, Tensor) else out

    return run


# --- int8 ------------------------------------------------------------------------------------
class PaddedRecurrentLayer(nn.Module):
    """One (bi)directional recurrent layer as two unidirectional modules that take lengths.

    A quantized recurrent module has no float weights for the encoder's per-direction kernel
    call, so the backward direction reads each row reversed within its length here instead.
    ``forward(x (B, T, I), lengths (B,))`` -> outputs (B, T, D*H), zeros at padding.
    """

    runs_padded = True

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        suffixes = ["", "_reverse"] if rnn.bidirectional else [""]
        self.directions = nn.ModuleList(_one_direction(rnn, suffix) for suffix in suffixes)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        outputs = [self.directions[0](x)[0]]  # (B, T, H): padding only follows real tokens
        if len(self.directions) == 2:
            backward = self.directions[1](reverse_padded(x, lengths))[0]  # (B, T, H)
            outputs.append(reverse_padded(backward, lengths))
        x = torch.cat(outputs, dim=-1)  # (B, T, D*H)
        return x * length_mask(lengths, x.size(1)).unsqueeze(-1).to(x.dtype)


def _one_direction(rnn: nn.RNNBase, suffix: str) -> nn.RNNBase:
    """A one-layer unidirectional copy of one direction of a one-layer ``rnn``."""
    single = type(rnn)(rnn.input_size, rnn.hidden_size, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(single, f"{name}_l0").copy_(getattr(rnn, f"{name}_l0{suffix}"))
    return single


def quantize(model: nn.Module) -> nn.Module:
    """``model`` with int8 dynamic quantization of its LSTM, GRU and linear layers.

    Encoder layers become :class:`PaddedRecurrentLayer` first; a character LM steps through
    its (quantized) recurrent modules instead of float cell kernels; bfloat16 autocast is off
    (the quantized kernels compute in float32).
    """
    from torch.ao.quantization import quantize_dynamic

    for module in model.modules():
        if isinstance(module, RecurrentEncoder):
            for index, rnn in enumerate(module.layers):
                module.layers[index] = PaddedRecurrentLayer(rnn)
    with _quiet():
        model = quantize_dynamic(model, {nn.LSTM, nn.GRU, nn.Linear}, dtype=torch.qint8)
    if hasattr(model, "_autocast"):  # Seq2Seq reads its output layer's float weight there
        model._autocast = contextlib.nullcontext
    if hasattr(model, "bf16"):
        model.bf16 = False
    if isinstance(model, CharLM):
        model.step = types.MethodType(_step_through_sequence, model)
    return model


def _step_through_sequence(model: nn.Module, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
    """CharLM.step for quantized layers: a one-character sequence through ``logits``."""
    logits, state = model.logits(tokens.unsqueeze(1), state)  # (B, 1, V)
    return logits[:, 0], state


@contextlib.contextmanager
def _quiet():
    """torch.ao's dynamic quantization warns that it is deprecated in favour of torchao,
    which is not a dependency; the eager API still works."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- ONNX Runtime ----------------------------------------------------------------------------
class OnnxGraph:
    """One ONNX Runtime inference graph (CPU execution provider, torch's thread count); feeds
    only the inputs the graph kept (the exporter drops inputs a model ignores)."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.runtime = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.runtime.get_inputs()}
        self.outputs = [o.name for o in self.runtime.get_outputs()]

    def __call__(self, **feeds: Tensor | None) -> dict[str, Tensor]:
        arrays = {name: np.ascontiguousarray(value.detach().cpu().numpy())
                  for name, value in feeds.items() if name in self.inputs and value is not None}
        results = self.runtime.run(self.outputs, arrays)
        return {name: torch.from_numpy(value) for name, value in zip(self.outputs, results)}


class OnnxClassifier(nn.Module):
    """TextClassifier.logits through ``classifier.onnx``."""

    def __init__(self, model: nn.Module, folder: Path):
        super().__init__()
        self.config = model.config
        self.graph = OnnxGraph(folder / "classifier.onnx")

    def logits(self, ids: Tensor, lengths: Tensor, embedded: Tensor | None = None) -> Tensor:
        """``ids (B, T)``, ``lengths (B,)`` -> class scores ``(B, C)``."""
        if embedded is not None:
            raise NlpseqError("the onnx backend takes token ids, not word vectors")
        return self.graph(ids=ids, lengths=lengths)["logits"]


class OnnxTagger(nn.Module):
    """SequenceTagger.decode: emissions from ``emissions.onnx``, then the CRF's Viterbi (or
    the argmax) outside the graph."""

    def __init__(self, model: nn.Module, folder: Path):
        super().__init__()
        self.config = model.config
        self.crf = model.crf
        self.graph = OnnxGraph(folder / "emissions.onnx")

    def emissions(self, batch: Any) -> Tensor:
        """Tag scores ``(B, T, K)`` of every token of a TaggerBatch."""
        return self.graph(ids=batch.ids, lengths=batch.lengths, casing=batch.casing,
                          word_chars=batch.word_chars, word_index=batch.word_index)["emissions"]

    @torch.no_grad()
    def decode(self, batch: Any) -> list[list[int]]:
        scores = self.emissions(batch)
        if self.crf is not None:
            return viterbi_numpy(self.crf, scores.numpy(), batch.mask.numpy())
        best = scores.argmax(dim=-1).tolist()
        return [row[:n] for row, n in zip(best, batch.lengths.tolist())]


def viterbi_numpy(crf: nn.Module, emissions: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    """The CRF's best path of each row, as ``LinearChainCRF.viterbi``, in numpy:
    emissions (B, T, K) float, mask (B, T) bool -> tag ids cut to each row's length."""
    start, trans, end = (t.detach().numpy() for t in crf.constrained_scores())
    batch_size, length, num_tags = emissions.shape
    best = start + emissions[:, 0]  # (B, K)
    pointers = np.zeros((length, batch_size, num_tags), dtype=np.int64)
    identity = np.arange(num_tags)
    for t in range(1, length):
        candidates = best[:, :, None] + trans  # (B, K_prev, K_cur)
        pointer = candidates.argmax(axis=1)  # (B, K)
        step = np.take_along_axis(candidates, pointer[:, None, :], axis=1)[:, 0]
        keep = mask[:, t : t + 1]
        best = np.where(keep, step + emissions[:, t], best)
        pointers[t] = np.where(keep, pointer, identity)  # past the end: stay on the last tag
    tag = (best + end).argmax(axis=1)  # (B,)
    path = np.empty((batch_size, length), dtype=np.int64)
    path[:, -1] = tag
    for t in range(length - 1, 0, -1):
        tag = pointers[t][np.arange(batch_size), tag]
        path[:, t - 1] = tag
    lengths = mask.sum(axis=1).tolist()
    return [row[:n] for row, n in zip(path.tolist(), lengths)]


class OnnxCharLM(nn.Module):
    """CharLM through ``charlm.onnx`` (tokens (B, T) and the recurrent state in, logits and
    the new state out): ``step`` runs one character, ``prime`` and ``forward`` many."""

    def __init__(self, model: nn.Module, folder: Path):
        super().__init__()
        self.config = model.config
        self.cell, self.layers, self.hidden_size = model.cell, model.layers, model.hidden_size
        self.bf16 = False
        self.graph = OnnxGraph(folder / "charlm.onnx")

    init_state = CharLM.init_state  # uses only cell, layers and hidden_size
    forward = CharLM.forward  # the summed loss, through logits below

    def logits(self, inputs: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """inputs (B, T) long -> (logits (B, T, V), final state)."""
        if state is None:
            state = self.init_state(inputs.size(0))
        hidden, cell = state if isinstance(state, tuple) else (state, None)
        out = self.graph(tokens=inputs, hidden=hidden, cell=cell)
        if self.cell == "lstm":
            return out["logits"], (out["hidden_out"], out["cell_out"])
        return out["logits"], out["hidden_out"]

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        logits, state = self.logits(tokens.unsqueeze(1), state)  # (B, 1, V)
        return logits[:, 0], state

    def prime(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        logits, state = self.logits(tokens, state)  # (B, T, V)
        return logits[:, -1], state


class OnnxSeq2Seq(nn.Module):
    """Seq2Seq through ``encoder.onnx`` (source -> initial decoder state, memory and
    attention keys) and ``decoder_step.onnx`` (one token -> log-probabilities, new state,
    attention); the loss for evaluation is teacher-forced through the step graph."""

    def __init__(self, model: nn.Module, folder: Path):
        super().__init__()
        self.config = model.config
        self.pad_id, self.bos_id, self.eos_id = model.pad_id, model.bos_id, model.eos_id
        self.encoder_graph = OnnxGraph(folder / "encoder.onnx")
        self.step_graph = OnnxGraph(folder / "decoder_step.onnx")

    def encode(self, source: Tensor, lengths: Tensor) -> Any:
        out = self.encoder_graph(source=source, lengths=lengths)
        mask = length_mask(lengths, source.size(1))  # (B, S)
        return DecoderState(out["hidden"], out.get("cell"), out["memory"], out["keys"], mask)

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any, Tensor]:
        """tokens (N,) -> (log-probabilities (N, V), new state, attention (N, S))."""
        out = self.step_graph(tokens=tokens, hidden=state.hidden, cell=state.cell,
                              memory=state.memory, keys=state.keys, mask=state.mask)
        state = state._replace(hidden=out["hidden_out"], cell=out.get("cell_out"))
        return out["log_probs"], state, out["attention"]

    reorder_state = staticmethod(Seq2Seq.reorder_state)

    def decode_step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        log_probs, state, attention = self.step(tokens, state)
        return log_probs, attention, state

    def forward(self, batch: Any, carry: None = None) -> tuple[Tensor, int, None]:
        """Teacher-forced summed negative log-likelihood and target token count."""
        state = self.encode(batch.source, batch.source_lengths)
        inputs, targets = batch.target[:, :-1], batch.target[:, 1:]  # (B, T)
        total = torch.zeros(())
        for t in range(inputs.size(1)):
            log_probs, state, _ = self.step(inputs[:, t], state)  # (B, V)
            real = targets[:, t] != self.pad_id
            picked = log_probs.gather(1, targets[:, t : t + 1])[:, 0]  # (B,)
            total = total - picked[real].double().sum()
        return total.float(), int((targets != self.pad_id).sum()), None


#: torch model class name -> its ONNX Runtime adapter
ONNX_ADAPTERS: dict[str, type[nn.Module]] = {
    "TextClassifier": OnnxClassifier,
    "SequenceTagger": OnnxTagger,
    "CharLM": OnnxCharLM,
    "Seq2Seq": OnnxSeq2Seq,
}


def describe(model: nn.Module, backend: str, run_dir: Path) -> dict[str, Any]:
    """Size figures of a loaded model for ``/info``: parameters and bytes on disk."""
    from nlpseq.checkpoint import WEIGHTS, RunDir, read_json

    weights = RunDir(run_dir).file(WEIGHTS)
    info: dict[str, Any] = {"backend": backend, "weights_bytes": weights.stat().st_size}
    params = sum(p.numel() for p in model.parameters())
    if params:
        info["parameters"] = params
    meta = Path(run_dir) / "onnx" / "meta.json"
    if backend == "onnx" and meta.exists():
        graphs = read_json(meta)["graphs"]
        info["onnx_bytes"] = sum((meta.parent / g).stat().st_size for g in graphs)
    return info
