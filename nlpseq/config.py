"""Pipeline configuration: a YAML file loaded into frozen, validated dataclasses.

Each YAML section maps to one dataclass. Unknown keys, wrong types and bad values are errors
naming the file, the line and (for unknown keys) the closest valid key. String values may use
``${VAR}`` and ``${VAR:-default}``. ``overrides`` (``section.key=value``) are applied after the
file and typed by the field they set.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nlpseq.errors import NlpseqError

TASK_NAMES = ("sentiment", "ner", "chargen", "translate")
# The data formats each task reads (data.format); a Hugging Face hub name only for sentiment.
TASK_FORMATS = {
    "sentiment": ("tsv", "csv", "jsonl", "hub"),
    "ner": ("conll",),
    "chargen": ("text",),
    "translate": ("parallel",),
}


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how to read them."""

    format: Literal["tsv", "csv", "jsonl", "conll", "parallel", "text", "hub"] = "tsv"
    train: str = ""
    dev: str = ""
    text_column: str = "text"
    label_column: str = "label"
    # CoNLL: which column holds the tag (-1 = last) and the scheme the files are written in.
    tag_column: int = -1
    tag_scheme: Literal["iob1", "iob2", "bioes"] = "iob1"
    # Parallel text: the target side of train/dev (``train``/``dev`` hold the source side).
    train_target: str = ""
    dev_target: str = ""
    max_source_length: int = 100
    max_target_length: int = 100
    # Raw text (char LM): the last ``val_fraction`` of the stream validates when ``dev`` is empty.
    val_fraction: float = 0.1
    # Hugging Face hub dataset (format: hub), for users who are online.
    hub_name: str = ""
    hub_config: str = ""
    train_split: str = "train"
    dev_split: str = "validation"
    # Use at most this many training examples (0 = all); handy for smoke tests.
    limit: int = 0


@dataclass(frozen=True)
class TokenizerConfig:
    """A Hugging Face ``tokenizers`` model trained on the training split."""

    kind: Literal["word", "bpe", "char"] = "word"
    lowercase: bool = False
    normalize_digits: bool = False
    # Word level: read PTB bracket escapes (-lrb-, -rrb-, -lsb-, ...) as the brackets, so
    # corpora that escape them (SST, Penn Treebank) and those that do not share one vocabulary.
    ptb_brackets: bool = True
    min_frequency: int = 1
    max_size: int = 50000
    max_length: int = 0  # truncate longer inputs (0 = no truncation)
    joint: bool = True  # translation: one vocabulary for source and target


@dataclass(frozen=True)
class EmbeddingsConfig:
    """Pretrained word vectors aligned to the tokenizer's vocabulary."""

    path: str = ""  # a file, or a gensim-data name (needs network)
    format: Literal["glove", "word2vec", "word2vec-binary", "fasttext", "gensim-data"] = "glove"
    freeze: bool = False
    # Add the N most frequent words of the embeddings file to the vocabulary, with their
    # vectors kept fixed, so words never seen in training still get a pretrained vector.
    extend_vocab: int = 0
    # Update only the embedding rows each batch uses (Adam/AdamW; sentiment and ner): the
    # semantics of torch's SparseAdam / TF's LazyAdam; much less work per step for a large
    # vocabulary. Off: dense Adam, which also moves unused rows by their momentum.
    lazy_updates: bool = False
    cache_dir: str = "${NLPSEQ_CACHE:-~/.cache/nlpseq}"


Pooling = Literal["last", "max", "mean", "attention", "max-mean"]
POOLINGS: tuple[str, ...] = typing.get_args(Pooling)


@dataclass(frozen=True)
class SentimentModelConfig:
    """BiRNN text classifier."""

    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    embedding_dim: int = 50
    hidden_size: int = 128
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.5
    embedding_dropout: float = 0.0
    pooling: Pooling = "last"
    # Training only: replace this fraction of tokens with <unk> (regularises fine-tuned embeddings).
    word_dropout: float = 0.0
    # Training only: also train on each batch with its word vectors moved by this L2 norm (per
    # text) in the direction that raises the loss most (Miyato et al., 2017); 0 = off. Costs
    # about 2.5x per step, and makes the classifier robust to near-synonyms it never saw.
    adversarial: float = 0.0


@dataclass(frozen=True)
class NerModelConfig:
    """BiRNN tagger with character features and a softmax or CRF output layer."""

    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    embedding_dim: int = 50
    hidden_size: int = 200
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.5
    embedding_dropout: float = 0.0
    char_encoder: Literal["cnn", "lstm", "none"] = "cnn"
    char_embedding_dim: int = 30
    char_hidden_size: int = 50
    char_kernel_size: int = 3
    casing_dim: int = 8
    output: Literal["crf", "softmax"] = "crf"
    train_scheme: Literal["iob1", "iob2", "bioes"] = "bioes"
    # Probability of replacing a known word by <unk> in training (teaches the unknown-word path).
    word_dropout: float = 0.0
    # Also feed the whole pretrained table, frozen, so words unseen in training keep their
    # vectors (stored once in the run directory; needs embeddings.path).
    frozen_vectors: bool = True


@dataclass(frozen=True)
class CharLMModelConfig:
    """Unidirectional character language model, trained statefully (truncated BPTT):
    ``train.batch_size`` contiguous lanes read ``seq_len`` characters at a time."""

    cell: Literal["lstm", "gru"] = "lstm"
    embedding_dim: int = 64
    hidden_size: int = 256
    layers: int = 2
    dropout: float = 0.0
    tie_weights: bool = False
    seq_len: int = 100
    # bfloat16 autocast inside the model, on CPU too (train.bf16 covers CUDA only): about 2x
    # faster training on CPUs with AMX/AVX512-BF16, slower on CPUs without them.
    bf16: bool = False
    # Validation reads eval.batch_size lanes; each lane first reads this many characters
    # before its start (not scored) so that it does not begin from an empty state.
    eval_context: int = 100


@dataclass(frozen=True)
class TranslateModelConfig:
    """Bidirectional encoder, attentional decoder."""

    cell: Literal["lstm", "gru"] = "gru"
    embedding_dim: int = 256
    hidden_size: int = 256
    layers: int = 1
    dropout: float = 0.2
    embedding_dropout: float = 0.0
    attention: Literal["bahdanau", "general", "dot"] = "general"
    teacher_forcing: float = 1.0  # < 1 feeds the model's own predictions (slower: step loop)
    tie_embeddings: bool = True  # decoder input embedding = output projection
    share_embeddings: bool = True  # one embedding for source and target (joint tokenizer only)
    label_smoothing: float = 0.1
    # bfloat16 autocast inside the model, on CPU too (train.bf16 covers CUDA only): much faster
    # on CPUs with AMX/AVX512-BF16, slower on CPUs without them.
    bf16: bool = False
    # Decoding: at most max_length_a * source_length + max_length_b target tokens; GNMT length
    # penalty alpha (0 = none); beam used for dev BLEU during training (eval.beam is used by
    # ``evaluate`` and ``translate``; 1 = greedy, the fastest).
    max_length_a: float = 1.5
    max_length_b: int = 10
    length_penalty: float = 0.6
    dev_beam: int = 1


MODEL_CONFIGS: dict[str, type] = {
    "sentiment": SentimentModelConfig,
    "ner": NerModelConfig,
    "chargen": CharLMModelConfig,
    "translate": TranslateModelConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, stopping, device."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    clip: float = 5.0
    schedule: Literal["none", "plateau", "cosine", "linear"] = "plateau"
    schedule_factor: float = 0.5  # plateau: multiply the lr by this
    schedule_patience: int = 1  # plateau: evaluations without improvement before decaying
    warmup_steps: int = 0
    patience: int = 5  # early stopping: evaluations without improvement (0 = never stop early)
    max_minutes: float = 0.0  # wall-clock budget (0 = none)
    evals_per_epoch: int = 1
    seed: int = 13
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = False  # autocast to bfloat16 on CUDA
    threads: int = 0  # torch CPU threads (0 = torch's default)
    bucket_pool: int = 50  # batches per length-sorting pool
    resume: bool = False
    # Evaluate and save an exponential moving average of the weights (0 = off; e.g. 0.999).
    ema: float = 0.0


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation options."""

    metric: str = ""  # the dev metric for model selection ("" = the task's default)
    batch_size: int = 256
    beam: int = 5


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline: one field per YAML section."""

    task: Literal["sentiment", "ner", "chargen", "translate"]
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    model: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = ""  # the file this pipeline was loaded from (not a YAML key)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every section (without ``source``), for writing back as YAML."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


SECTIONS = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "embeddings": EmbeddingsConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}

# The valid range of every numeric field, by name (a name means the same in every section):
# (low, high, whether low itself is allowed, whether high itself is allowed); None = unbounded.
_AT_LEAST_1 = (1, None, True, True)
_AT_LEAST_0 = (0, None, True, True)
_POSITIVE = (0, None, False, True)
_PROBABILITY = (0, 1, True, False)  # dropout-like: 1 would drop everything
BOUNDS: dict[str, tuple[float | None, float | None, bool, bool]] = {
    **dict.fromkeys(
        ("epochs", "batch_size", "embedding_dim", "hidden_size", "layers", "seq_len",
         "evals_per_epoch", "bucket_pool", "beam", "dev_beam", "char_embedding_dim",
         "char_hidden_size", "char_kernel_size", "max_source_length", "max_target_length",
         "max_size", "min_frequency"), _AT_LEAST_1),
    **dict.fromkeys(
        ("max_length", "limit", "extend_vocab", "warmup_steps", "patience", "schedule_patience",
         "threads", "eval_context", "casing_dim", "max_length_b", "seed", "weight_decay",
         "clip", "max_minutes", "adversarial", "length_penalty", "max_length_a"), _AT_LEAST_0),
    **dict.fromkeys(
        ("dropout", "embedding_dropout", "word_dropout", "label_smoothing", "val_fraction",
         "momentum", "ema"), _PROBABILITY),
    "lr": _POSITIVE,
    "schedule_factor": (0, 1, False, False),
    "teacher_forcing": (0, 1, True, True),
}

# Names users bring from other toolkits, for the "did you mean" of an unknown key.
ALIASES = {
    "learning_rate": "lr", "lr_rate": "lr", "num_epochs": "epochs", "n_epochs": "epochs",
    "max_epochs": "epochs", "hidden_dim": "hidden_size", "hidden_units": "hidden_size",
    "units": "hidden_size", "num_layers": "layers", "n_layers": "layers",
    "embed_dim": "embedding_dim", "emb_dim": "embedding_dim", "embedding_size": "embedding_dim",
    "optim": "optimizer", "grad_clip": "clip", "clip_norm": "clip", "max_grad_norm": "clip",
    "early_stopping_patience": "patience", "rnn_type": "cell", "bidirectional_rnn": "bidirectional",
}


def _check_bounds(name: str, value: Any, where: str, path: str | None, line: int | None) -> None:
    """Raise NlpseqError when a numeric ``value`` is outside :data:`BOUNDS` for ``name``."""
    if name not in BOUNDS or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high, low_ok, high_ok = BOUNDS[name]
    too_low = low is not None and (value < low or (value == low and not low_ok))
    too_high = high is not None and (value > high or (value == high and not high_ok))
    if not (too_low or too_high):
        return
    if high is None:
        wanted = f">= {low}" if low_ok else f"> {low}"
    else:
        wanted = f"in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
    raise NlpseqError(f"{where}: must be {wanted}, got {value}", path, line)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, path: str | None = None, line: int | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in ``value``."""

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is not None:
            return default
        raise NlpseqError(f"environment variable ${{{name}}} is not set", path, line)

    return _ENV.sub(sub, value)


def _coerce(value: Any, annotation: Any, where: str, path: str | None, line: int | None) -> Any:
    """Check ``value`` against a field annotation, converting where it is lossless."""
    origin = typing.get_origin(annotation)
    if isinstance(value, str):
        value = expand_env(value, path, line)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise NlpseqError(
                f"{where}: {value!r} is not one of {', '.join(map(str, choices))}", path, line
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, path, line)
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        if not isinstance(value, bool):
            raise NlpseqError(f"{where}: expected true/false, got {value!r}", path, line)
        return value
    if annotation is int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise NlpseqError(f"{where}: expected an integer, got {value!r}", path, line)
        return value
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NlpseqError(f"{where}: expected a number, got {value!r}", path, line)
        return float(value)
    if annotation is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise NlpseqError(f"{where}: expected a string, got {value!r}", path, line)
        return value
    return value


def _closest_hint(key: str, names: list[str], prefix: str = "") -> str:
    """``; did you mean X?`` or, when nothing is close, the closest key and all valid keys."""
    known = {alias: name for alias, name in ALIASES.items() if name in names}
    if key in known:
        return f"; did you mean {prefix}{known[key]}?"
    close = difflib.get_close_matches(key, [*names, *known], n=1)
    if close:
        return f"; did you mean {prefix}{known.get(close[0], close[0])}?"
    closest = difflib.get_close_matches(key, names, n=1, cutoff=0.0)
    if not closest:
        return ""
    return (f"; the closest valid key is {prefix}{closest[0]} "
            f"(valid: {', '.join(prefix + n for n in names)})")


def _located(
    key: str, path: str | None, lines: dict[str, int], overridden: frozenset[str]
) -> tuple[str, str | None, int | None]:
    """How an error names ``section.key``: with its file and line, or as ``--set`` when the
    value came from the command line (pointing at the file line it replaced would mislead)."""
    if key in overridden:
        return f"--set {key}", None, None
    return key, path, lines.get(key)


def _build_section(
    cls: type, values: dict, section: str, path: str | None, lines: dict[str, int],
    overridden: frozenset[str] = frozenset(),
) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        where, where_path, line = _located(f"{section}.{key}", path, lines, overridden)
        if key not in names:
            hint = _closest_hint(str(key), names, f"{section}.")
            message = (f"{where}: unknown key{hint}" if f"{section}.{key}" in overridden
                       else f"unknown key {section}.{key}{hint}")
            raise NlpseqError(message, where_path, line)
        kwargs[key] = _coerce(value, hints[key], where, where_path, line)
        _check_bounds(key, kwargs[key], where, where_path, line)
    for f in dataclasses.fields(cls):
        # Defaults may use ${VAR:-default} too (e.g. the cache directory).
        if f.name not in kwargs and isinstance(f.default, str) and "${" in f.default:
            kwargs[f.name] = expand_env(f.default, path)
    return cls(**kwargs)


def _key_lines(text: str, path: str | None = None) -> dict[str, int]:
    """Map ``section.key`` (and ``section``) to the 1-based line it is written on. A key
    written twice is an error: YAML loaders keep the last silently, hiding the first."""
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def add(name: str, key_node: yaml.Node) -> None:
        line = key_node.start_mark.line + 1
        if name in lines:
            raise NlpseqError(f"{name} is written twice (first on line {lines[name]})", path, line)
        lines[name] = line

    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, value_node in node.value:
        section = str(key_node.value)
        add(section, key_node)
        if isinstance(value_node, yaml.MappingNode):
            for sub_key, _ in value_node.value:
                add(f"{section}.{sub_key.value}", sub_key)
    return lines


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``["train.lr=0.01", ...]`` -> ``{"train": {"lr": 0.01}}`` (values parsed as YAML)."""
    out: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise NlpseqError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def config_from_dict(
    raw: dict,
    path: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    lines: dict[str, int] | None = None,
) -> PipelineConfig:
    """Validate a parsed pipeline dict (plus overrides) into a :class:`PipelineConfig`."""
    lines = lines or {}
    if not isinstance(raw, dict):
        raise NlpseqError("a pipeline must be a mapping of sections", path, 1)
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    parsed = parse_overrides(overrides)
    overridden = frozenset(f"{s}.{k}" for s, values in parsed.items() for k in values)
    for section, values in parsed.items():
        if section == "task":
            raise NlpseqError("the task cannot be overridden with --set")
        if section not in raw or raw[section] is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise NlpseqError(f"--set {section}.*: {section} is not a section")
        raw[section].update(values)
    valid = ["task", "model", *SECTIONS]
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise NlpseqError(f"unknown section {key!r}{hint}", path, lines.get(str(key)))
    task = raw.get("task")
    if task not in TASK_NAMES:
        raise NlpseqError(
            f"task must be one of {', '.join(TASK_NAMES)}, got {task!r}", path, lines.get("task")
        )
    built: dict[str, Any] = {"task": task}
    for section, cls in [*SECTIONS.items(), ("model", MODEL_CONFIGS[task])]:
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise NlpseqError(f"section {section} must be a mapping", path, lines.get(section))
        built[section] = _build_section(cls, values, section, path, lines, overridden)
    config = PipelineConfig(**built, source=str(path or ""))
    given = (raw.get("data") or {}).get("format")
    if given is not None and config.data.format not in TASK_FORMATS[task]:
        key, *where = _located("data.format", path, lines, overridden)
        raise NlpseqError(f"{key}: the {task} task reads {' or '.join(TASK_FORMATS[task])}, "
                          f"not {config.data.format}", *where)
    if config.embeddings.lazy_updates:
        key, *where = _located("embeddings.lazy_updates", path, lines, overridden)
        if task not in ("sentiment", "ner"):
            raise NlpseqError(f"{key}: only sentiment and ner models update word embeddings "
                              f"lazily, not {task}", *where)
        if config.train.optimizer == "sgd":
            raise NlpseqError(f"{key} needs train.optimizer adam or adamw, not sgd", *where)
    return config


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read a pipeline YAML file and validate it (with ``section.key=value`` overrides)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NlpseqError("pipeline file not found", path) from None
    except UnicodeDecodeError as err:
        raise NlpseqError(f"not valid UTF-8 (byte {err.start})", path) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise NlpseqError(f"invalid YAML: {getattr(err, 'problem', err)}", path, line) from None
    return config_from_dict(raw, str(path), overrides, _key_lines(text, str(path)))


def save_config(config: PipelineConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (the caller makes the write atomic)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
