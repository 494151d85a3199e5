"""``nlpseq bench``: throughput of the text stages, sentiment training and inference, and the
fraction of the machine's fp32 matmul rate that training reaches.

Figures are medians over repeated timed rounds so a noisy, shared machine disturbs them less;
training rounds alternate with matmul rounds and the fraction is the median of neighbouring
rounds' ratios. ``other_processes_cores`` says how many cores other processes kept busy
meanwhile (from /proc/stat, where there is one): figures taken beside another job are that
job's as much as nlpseq's.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nlpseq import native
from nlpseq.batching import TokenStore, bucket_batches
from nlpseq.config import TokenizerConfig, TrainConfig
from nlpseq.corpora import read_labelled
from nlpseq.cpuload import OtherLoad
from nlpseq.models.classifier import ClassifierConfig, TextClassifier
from nlpseq.tokenize import TextTokenizer
from nlpseq.trainer import make_optimizer, update

DEMO = Path(__file__).resolve().parent.parent / "corpora" / "sentiment" / "train.tsv"


def _rate(fn: Callable[[], float], seconds: float) -> float:
    """Work per second of calling ``fn`` (which returns work done) for about ``seconds``."""
    start, work = time.perf_counter(), 0.0
    while True:
        work += fn()
        spent = time.perf_counter() - start
        if spent >= seconds:
            return work / spent


def _rounds(fn: Callable[[], float], seconds: float, rounds: int = 5) -> list[float]:
    """Rates of ``fn`` in ``rounds`` rounds, ``seconds`` in all."""
    return [_rate(fn, seconds / rounds) for _ in range(rounds)]


def _alternate(
    first: Callable[[], float], second: Callable[[], float], seconds: tuple[float, float],
    rounds: int = 5,
) -> tuple[list[float], list[float]]:
    """Rates of ``first`` and ``second`` in alternating rounds (``seconds`` in all for each),
    so round k of one can be compared with round k of the other."""
    rates: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        rates[0].append(_rate(first, seconds[0] / rounds))
        rates[1].append(_rate(second, seconds[1] / rounds))
    return rates


def _matmul(size: int = 1024) -> Callable[[], float]:
    """One fp32 ``size`` x ``size`` matrix product per call; returns its FLOPs."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return lambda: (a @ b, 2.0 * size**3)[1]


def lstm_train_flops_per_token(embedding_dim: int, hidden: int, directions: int = 2) -> float:
    """Matmul FLOPs of one BiLSTM layer per token, forward + backward (3x forward)."""
    forward = directions * 2 * 4 * hidden * (embedding_dim + hidden)
    return 3.0 * forward


def run_bench(
    corpora: str = "",
    batch_size: int = 64,
    hidden_size: int = 128,
    embedding_dim: int = 50,
    seconds: float = 20.0,
    threads: int = 0,
    pooling: str = "last",
    lazy_updates: bool = True,
) -> dict[str, float | str]:
    """Measure and return the figures (see module docstring). The default model is the plain
    PyTorch script's (``torch_sst2.py`` among the baselines): BiLSTM over 50d vectors, both
    directions' final states -> dropout 0.5 -> linear; ``pooling`` picks another head.
    ``lazy_updates``: Adam updates only the embedding rows a batch uses, as the sentiment
    pipelines train (``embeddings.lazy_updates``); False updates every row."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    source = Path(corpora) / "sentiment" / "sst2" / "glue_train.tsv" if corpora else DEMO
    texts = read_labelled(source, "tsv").texts
    tokenizer = TextTokenizer.train(texts, TokenizerConfig(kind="word", lowercase=True))
    figures: dict[str, float | str] = {
        "corpus": str(source), "threads": torch.get_num_threads(), "pooling": pooling,
        "embedding_updates": "lazy" if lazy_updates else "dense",
    }
    neighbours = OtherLoad()  # figures taken beside another job say little about nlpseq
    figures.update(_text_figures(tokenizer, texts[:20000], batch_size, seconds / 4))
    store = TokenStore(tokenizer.encode_batch(texts))
    model = TextClassifier(
        ClassifierConfig(embedding_dim=embedding_dim, hidden_size=hidden_size, pooling=pooling),
        tokenizer.vocab_size, 2, sparse_embedding=lazy_updates,
    )
    probe = torch.zeros(1, 1, embedding_dim)
    figures["lstm_kernel"] = "native" if native.usable(model.encoder.layers[0], probe) else "torch"
    train_rates, peaks = _train_rounds(model, store, batch_size, seconds)
    figures["train_tokens_per_s"] = statistics.median(train_rates)
    figures["inference_sentences_per_s"] = _inference_rate(model, store, seconds / 2)
    per_token = lstm_train_flops_per_token(embedding_dim, hidden_size)
    figures["matmul_gflops"] = statistics.median(peaks) / 1e9
    figures["train_gflops"] = figures["train_tokens_per_s"] * per_token / 1e9
    figures["train_fraction_of_matmul"] = statistics.median(
        rate * per_token / peak for rate, peak in zip(train_rates, peaks))
    figures["text_over_train_tokens"] = (
        figures["text_tokens_per_s"] / figures["train_tokens_per_s"])
    others = neighbours.cores()
    if others is not None:
        figures["other_processes_cores"] = others
    return figures


def _text_figures(tokenizer: TextTokenizer, chunk: list[str], batch_size: int,
                  seconds: float) -> dict[str, float]:
    """Sentences and tokens per second through tokenize -> store -> bucket -> collate."""
    n_tokens = sum(len(t.split()) for t in chunk)

    def text_stages() -> float:
        store = TokenStore(tokenizer.encode_batch(chunk))
        for batch in bucket_batches(store.lengths.tolist(), batch_size, seed=0):
            store.collate(batch)
        return len(chunk)

    rate = statistics.median(_rounds(text_stages, seconds))
    return {"text_sentences_per_s": rate, "text_tokens_per_s": rate * n_tokens / len(chunk)}


def _train_rounds(model: TextClassifier, store: TokenStore, batch_size: int,
                  seconds: float) -> tuple[list[float], list[float]]:
    """Training tokens/s rounds and the matmul FLOP/s rounds between them, taking the step
    ``nlpseq train`` takes (``make_optimizer`` and ``update``)."""
    labels = torch.arange(len(store)) % 2
    batches = [
        store.collate(b, labels) for b in bucket_batches(store.lengths.tolist(), batch_size, seed=1)
    ]
    config = TrainConfig(lr=1e-3, clip=5.0)
    optimizer = make_optimizer(model, config)
    position = itertools.count()

    def train_step() -> float:
        batch = batches[next(position) % len(batches)]
        loss, count, _ = model(batch)
        update(model, optimizer, loss, count, config.clip)
        return batch.num_tokens

    model.train()
    for _ in range(5):
        train_step()
    # Training rounds alternate with matmul rounds, and the fraction is the median of each
    # round's ratio to its neighbour: a shared machine's speed drifts within a minute.
    return _alternate(train_step, _matmul(), (seconds, min(3.0, seconds / 4)))


def _inference_rate(model: TextClassifier, store: TokenStore, seconds: float) -> float:
    """Median sentences/s of class probabilities over the first 20,000 sentences."""
    model.eval()
    batches = [
        store.collate(b) for b in bucket_batches(store.lengths[:20000].tolist(), 256, shuffle=False)
    ]
    position = itertools.count()

    @torch.no_grad()
    def infer_step() -> float:
        batch = batches[next(position) % len(batches)]
        model.logits(batch.ids, batch.lengths).softmax(-1)
        return batch.ids.size(0)

    return statistics.median(_rounds(infer_step, seconds))


def run_inference_bench(
    run_dir: str,
    input_file: str = "",
    *,
    length: int = 1000,
    prompt: str = "\n",
    seconds: float = 20.0,
    threads: int = 0,
    backends: tuple[str, ...] = ("torch",),
    beam: int | None = None,
) -> dict[str, float | str]:
    """Inference speed of a trained run under each of ``backends`` (rounds alternate between
    them, so a shared machine's drift reaches all alike): characters/s of sampling for a
    chargen run (from ``prompt``, ``length`` characters per round), else input lines/s
    through ``predict_lines`` (the path ``nlpseq predict`` / ``nlpseq translate`` take) over
    ``input_file``: ``generate_chars_per_s`` or ``lines_per_s`` of the first backend, and
    with several, the same key suffixed ``_{backend}`` for each."""
    import nlpseq
    from nlpseq.corpora import read_lines
    from nlpseq.errors import NlpseqError

    if threads:
        torch.set_num_threads(threads)
    tasks = {backend: nlpseq.load(run_dir, backend=backend) for backend in backends}
    first = next(iter(tasks.values()))
    name, generates = first.name, "generate" in first.commands
    figures: dict[str, float | str] = {
        "run": str(run_dir), "task": name, "threads": torch.get_num_threads(),
        "backends": ",".join(backends),
    }
    if not generates and not input_file:
        raise NlpseqError(f"benchmarking a {name} run needs --input FILE")
    neighbours = OtherLoad()
    if generates:
        key = "generate_chars_per_s"
        work = {b: _sampler(t, prompt, length) for b, t in tasks.items()}
        figures["length"] = length
    else:
        lines = [line for _, line in read_lines(input_file)]
        options = {"beam": beam} if beam is not None else {}
        key = "lines_per_s"
        work = {b: _predictor(t, lines, options) for b, t in tasks.items()}
        figures.update(input=input_file, lines=len(lines), **options)
    for fn in work.values():
        fn()  # warm-up
    rates: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(5):
        for backend, fn in work.items():
            rates[backend].append(_rate(fn, seconds / 5 / len(backends)))
    figures[key] = statistics.median(rates[backends[0]])
    if len(backends) > 1:
        for backend in backends:
            figures[f"{key}_{backend}"] = statistics.median(rates[backend])
    outputs = 0 if generates else sum(1 for _ in tasks[backends[0]].predict_lines(
        lines, **options))
    if outputs and outputs != len(lines):  # NER reading CoNLL: sentences out, not lines
        figures["sentences"] = outputs
        for backend in backends:
            suffix = f"_{backend}" if len(backends) > 1 else ""
            figures[f"sentences_per_s{suffix}"] = (
                statistics.median(rates[backend]) * outputs / len(lines))
    others = neighbours.cores()
    if others is not None:
        figures["other_processes_cores"] = others
    return figures


def _sampler(task, prompt: str, length: int) -> Callable[[], float]:
    seeds = itertools.count()

    def sample() -> float:
        text = task.generate(prompt, length=length, temperature=0.8, seed=next(seeds))
        return len(text) - len(prompt)

    return sample


def _predictor(task, lines: list[str], options: dict) -> Callable[[], float]:
    def predict() -> float:
        """One pass over every line; returns the lines done."""
        for _ in task.predict_lines(lines, **options):
            pass
        return len(lines)

    return predict
