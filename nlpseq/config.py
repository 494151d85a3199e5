"""Pipeline configuration: a YAML file loaded into frozen, validated dataclasses.

Each YAML section maps to one dataclass; the ``model`` section's class comes from the task
table (``Task.ModelConfig``). Every key is declared once, with :func:`key`: its type (the
annotation), default, allowed range, one-line meaning and the tasks it applies to. Validation,
``--set`` typing, error messages and ``docs/config.md`` (``python -m nlpseq.config``) all
derive from those declarations. Unknown keys, keys that do not apply to the pipeline's task,
wrong types and bad values are errors naming the file, the line and (for unknown keys) the
closest valid key. String values may use ``${VAR}`` and ``${VAR:-default}``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nlpseq.errors import NlpseqError

#: ``tasks=ALL``: the key applies to every task, including tasks added later.
ALL = "all"


def key(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    help: str,
    tasks: str | tuple[str, ...] = ALL,
) -> Any:
    """Declare a config key: a dataclass field with its ``default``, valid range
    ``low``..``high`` (``None`` = unbounded; ``*_open``: the bound itself is excluded), one-line
    ``help`` and the ``tasks`` it applies to (``ALL`` or a tuple of task names)."""
    meta = {"low": low, "high": high, "low_open": low_open, "high_open": high_open,
            "help": help, "tasks": tasks}
    return field(default=default, metadata=meta)


def applies(f: dataclasses.Field, task: str) -> bool:
    """Whether the key declared by ``f`` applies to ``task``."""
    tasks = f.metadata.get("tasks", ALL)
    return tasks == ALL or task in tasks


Pooling = Literal["last", "max", "mean", "attention", "max-mean"]
#: the classifier's poolings (here so that the CLI can offer them without importing torch)
POOLINGS: tuple[str, ...] = typing.get_args(Pooling)
_SENTIMENT, _NER, _CHARGEN, _TRANSLATE = ("sentiment",), ("ner",), ("chargen",), ("translate",)
_WORD_VECTORS = ("sentiment", "ner")


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how to read them."""

    format: str = key("", help="how the data files are written (\"\" = the task's first format)")
    train: str = key("", help="training data file (the source side for translate)")
    dev: str = key("", help="development data file for evaluation and model selection")
    text_column: str = key("text", help="column (or JSON key) of the text", tasks=_SENTIMENT)
    label_column: str = key("label", help="column (or JSON key) of the label", tasks=_SENTIMENT)
    label_names: str = key("", tasks=_SENTIMENT, help="names to print for the labels, e.g. "
                           "\"0: negative, 1: positive\" (\"\" = the labels as written)")
    tag_column: int = key(-1, help="CoNLL column holding the tag (-1 = the last)", tasks=_NER)
    tag_scheme: Literal["iob1", "iob2", "bioes"] = key(
        "iob1", help="tag scheme the CoNLL files are written in", tasks=_NER)
    train_target: str = key("", help="target side of the training data", tasks=_TRANSLATE)
    dev_target: str = key("", help="target side of the development data", tasks=_TRANSLATE)
    max_source_length: int = key(100, low=1, help="longest source sentence kept for training",
                                 tasks=_TRANSLATE)
    max_target_length: int = key(100, low=1, help="longest target sentence kept for training",
                                 tasks=_TRANSLATE)
    val_fraction: float = key(0.1, low=0, high=1, high_open=True, tasks=_CHARGEN,
                              help="the last fraction of the text validates when dev is empty")
    hub_name: str = key("", help="Hugging Face hub dataset name (format: hub; needs network)",
                        tasks=_SENTIMENT)
    hub_config: str = key("", help="configuration of the hub dataset", tasks=_SENTIMENT)
    train_split: str = key("train", help="hub split used for training", tasks=_SENTIMENT)
    dev_split: str = key("validation", help="hub split used as dev data", tasks=_SENTIMENT)
    id_column: str = key("series_id", help="long layout: column naming each row's series",
                         tasks=("forecast",))
    time_column: str = key("timestamp", help="long layout: column of the timestamps (numbers "
                           "or ISO dates)", tasks=("forecast",))
    value_column: str = key("value", help="long layout: column of the values",
                            tasks=("forecast",))
    dev_size: int = key(0, low=0, tasks=_SENTIMENT, help="with no dev file: hold out this many "
                        "training examples (a fixed random choice, whatever train.seed) as dev")
    limit: int = key(0, low=0, help="use at most this many training examples (0 = all)")


@dataclass(frozen=True)
class TokenizerConfig:
    """A Hugging Face ``tokenizers`` model trained on the training split."""

    kind: Literal["word", "bpe", "char"] = key("word", help="tokenizer model (chargen: char)")
    lowercase: bool = key(False, help="lowercase the text before tokenizing")
    normalize_digits: bool = key(False, help="map every digit to 0")
    ptb_brackets: bool = key(True, help="word level: read PTB escapes (-lrb-, ...) as brackets")
    min_frequency: int = key(1, low=1, help="fewest occurrences for a vocabulary entry")
    max_size: int = key(50000, low=1, help="most vocabulary entries (specials not counted)")
    max_length: int = key(0, low=0, help="truncate longer inputs to this many tokens (0 = never)")
    strip_html: bool = key(False, help="word level: read HTML tags such as <br /> as spaces")
    split_punctuation: bool = key(False, help="word level: also split punctuation off words "
                                  "(for raw text; PTB-tokenized text needs no splitting)")
    joint: bool = key(True, help="one vocabulary for source and target", tasks=_TRANSLATE)


@dataclass(frozen=True)
class EmbeddingsConfig:
    """Pretrained word vectors aligned to the tokenizer's vocabulary."""

    path: str = key("", help="vectors file, or a gensim-data name (needs network)",
                    tasks=_WORD_VECTORS)
    format: Literal["glove", "word2vec", "word2vec-binary", "fasttext", "gensim-data"] = key(
        "glove", tasks=_WORD_VECTORS, help="how the vectors file is written (gensim-data: "
        "embeddings.path names a model to download, which imports the Python code shipped "
        "with it, so it also needs the environment variable NLPSEQ_ALLOW_GENSIM_DATA=1)")
    freeze: bool = key(False, help="keep the pretrained vectors fixed", tasks=_WORD_VECTORS)
    extend_vocab: int = key(0, low=0, tasks=_WORD_VECTORS, help="add the N most frequent words "
                            "of the vectors file to the vocabulary, their vectors fixed")
    lazy_updates: bool = key(False, tasks=_WORD_VECTORS, help="Adam updates only the embedding "
                             "rows each batch uses (needs adam or adamw)")
    cache_dir: str = key("${NLPSEQ_CACHE:-~/.cache/nlpseq}", tasks=_WORD_VECTORS,
                         help="folder caching vectors aligned to a vocabulary")
    word2vec_dim: int = key(0, low=0, tasks=_SENTIMENT, help="also train word2vec vectors "
                            "(CBOW) of this size on the training texts and "
                            "embeddings.word2vec_text; each word's vector is its pretrained "
                            "one followed by this one, so model.embedding_dim is the two sizes "
                            "together (0 = off)")
    word2vec_text: str = key("", tasks=_SENTIMENT, help="more text for those vectors, read as "
                             "data.train is (its text column; labels are not read)")
    word2vec_epochs: int = key(5, low=1, tasks=_SENTIMENT, help="passes of word2vec over "
                               "its texts")
    word2vec_min_count: int = key(3, low=1, tasks=_SENTIMENT, help="fewest occurrences for a "
                                  "word to get a word2vec vector (others get zeros)")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, stopping, device."""

    epochs: int = key(20, low=1, help="passes over the training data")
    batch_size: int = key(64, low=1, help="examples per batch (chargen: contiguous lanes)")
    optimizer: Literal["adam", "adamw", "sgd"] = key("adam", help="optimisation algorithm")
    lr: float = key(1e-3, low=0, low_open=True, help="learning rate")
    weight_decay: float = key(0.0, low=0, help="L2 penalty (decoupled for adamw)")
    momentum: float = key(0.9, low=0, high=1, high_open=True, help="sgd momentum")
    clip: float = key(5.0, low=0, help="clip the gradient norm to this (0 = no clipping)")
    schedule: Literal["none", "plateau", "cosine", "linear"] = key(
        "plateau", help="learning rate schedule")
    schedule_factor: float = key(0.5, low=0, high=1, low_open=True, high_open=True,
                                 help="plateau: multiply the learning rate by this")
    schedule_patience: int = key(1, low=0, help="plateau: evaluations without improvement "
                                 "before decaying")
    warmup_steps: int = key(0, low=0, help="steps of linear warm-up")
    patience: int = key(5, low=0, help="early stopping: evaluations without improvement "
                        "(0 = never stop early)")
    max_minutes: float = key(0.0, low=0, help="wall-clock budget in minutes (0 = none)")
    evals_per_epoch: int = key(1, low=1, help="dev evaluations per epoch")
    seed: int = key(13, low=0, help="random seed")
    device: Literal["auto", "cpu", "cuda"] = key("auto", help="where to train")
    bf16: bool = key(False, help="autocast to bfloat16 on CUDA")
    threads: int = key(0, low=0, help="torch CPU threads (0 = torch's default)")
    bucket_pool: int = key(50, low=1, help="batches per length-sorting pool")
    resume: bool = key(False, help="continue the run in the output folder")
    ema: float = key(0.0, low=0, high=1, high_open=True, help="evaluate and save an "
                     "exponential moving average of the weights with this decay (0 = off)")
    curves: bool = key(True, help="draw curves.png in the run directory at the end (needs "
                       "matplotlib: nlpseq[plot])")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation options."""

    metric: str = key("", help="dev metric for model selection (\"\" = the task's default)")
    batch_size: int = key(256, low=1, help="examples per evaluation batch")
    max_tokens: int = key(65536, low=1, help="at most this many (padded) tokens per evaluation "
                          "and prediction batch, so long texts come in smaller batches",
                          tasks=_WORD_VECTORS)
    beam: int = key(5, low=1, high=1000, help="beam size of evaluate and translate (1 = "
                    "greedy; at most nlpseq.decoding.MAX_BEAM)",
                    tasks=_TRANSLATE)
    dynamic_lr: float = key(0.0, low=0, help="`evaluate` adapts the model to the text as it "
                            "scores it, read as one stream: one SGD step of this size after "
                            "each window of eval.dynamic_window characters (dynamic "
                            "evaluation); 0 keeps the weights fixed. Training's dev figures "
                            "always keep them fixed", tasks=_CHARGEN)
    dynamic_window: int = key(50, low=1, help="characters scored before each adaptation step "
                              "of dynamic evaluation", tasks=_CHARGEN)


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline: one field per YAML section."""

    task: str
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    model: Any = None  # the task's ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = ""  # the file this pipeline was loaded from (not a YAML key)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the task and every key that applies to it, for writing as YAML."""
        out: dict[str, Any] = {"task": self.task}
        for section in ("data", "tokenizer", "embeddings", "model", "train", "eval"):
            values = getattr(self, section)
            out[section] = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)
                            if section == "model" or applies(f, self.task)}
        return out


SECTIONS = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "embeddings": EmbeddingsConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
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


def task_names() -> list[str]:
    """The tasks of the task table (:data:`nlpseq.tasks.TASKS`)."""
    from nlpseq.tasks import TASKS  # here, not at the top: the tasks import this module

    return list(TASKS)


def _task_class(name: str) -> Any:
    """The task table's class for ``name``: its ``ModelConfig`` and ``formats``."""
    from nlpseq.tasks import task_class

    return task_class(name)


def _check_range(f: dataclasses.Field, value: Any, where: str, path: str | None,
                 line: int | None) -> None:
    """Raise NlpseqError when a numeric ``value`` is NaN, infinite or outside the range
    declared for the key ``f``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise NlpseqError(f"{where}: must be a finite number, got {value}", path, line)
    low, high = f.metadata.get("low"), f.metadata.get("high")
    low_open, high_open = f.metadata.get("low_open", False), f.metadata.get("high_open", False)
    too_low = low is not None and (value < low or (value == low and low_open))
    too_high = high is not None and (value > high or (value == high and high_open))
    if too_low or too_high:
        raise NlpseqError(f"{where}: must be {describe_range(f)}, got {value}", path, line)


def describe_range(f: dataclasses.Field) -> str:
    """The valid range of a key as text: ``>= 1``, ``> 0``, ``in [0, 1)``; "" = unbounded."""
    m = f.metadata
    low, high = m.get("low"), m.get("high")
    if low is None and high is None:
        return ""
    if high is None:
        return f"> {low}" if m.get("low_open") else f">= {low}"
    if low is None:
        return f"< {high}" if m.get("high_open") else f"<= {high}"
    return (f"in {'(' if m.get('low_open') else '['}{low}, {high}"
            f"{')' if m.get('high_open') else ']'}")


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


def _scalar(value: Any, kind: type, where: str, path: str | None, line: int | None) -> Any:
    """``value`` as a bool, int, float or str, converting strings (from ``--set`` or
    ``${VAR}``) where that is lossless."""
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        if not isinstance(value, bool):
            raise NlpseqError(f"{where}: expected true/false, got {value!r}", path, line)
        return value
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise NlpseqError(f"{where}: expected a string, got {value!r}", path, line)
        return value
    if isinstance(value, str):
        try:
            value = kind(value)
        except ValueError:
            pass
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise NlpseqError(f"{where}: expected an integer, got {value!r}", path, line)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NlpseqError(f"{where}: expected a number, got {value!r}", path, line)
        return float(value)
    return value


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
    if annotation in (bool, int, float, str):
        return _scalar(value, annotation, where, path, line)
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


def _refuse_key(
    key: str, fields: dict[str, dataclasses.Field], valid: list[str], section: str, task: str,
    path: str | None, lines: dict[str, int], overridden: frozenset[str],
) -> typing.NoReturn:
    """Raise the error for a key that is unknown, or known but not for ``task``."""
    name = f"{section}.{key}"
    where, where_path, line = _located(name, path, lines, overridden)
    if key in fields:
        only = ", ".join(fields[key].metadata["tasks"])
        raise NlpseqError(f"{where}: does not apply to the {task} task (only {only})",
                          where_path, line)
    hint = _closest_hint(key, valid, f"{section}.")
    message = f"{where}: unknown key{hint}" if name in overridden else f"unknown key {name}{hint}"
    raise NlpseqError(message, where_path, line)


def _build_section(
    cls: type, values: dict, section: str, task: str, path: str | None,
    lines: dict[str, int], overridden: frozenset[str] = frozenset(),
) -> Any:
    """The section dataclass ``cls`` from the ``values`` written in the pipeline."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    valid = [n for n, f in fields.items() if section == "model" or applies(f, task)]
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            _refuse_key(str(key), fields, valid, section, task, path, lines, overridden)
        where, where_path, line = _located(f"{section}.{key}", path, lines, overridden)
        kwargs[key] = _coerce(value, hints[key], where, where_path, line)
        _check_range(fields[key], kwargs[key], where, where_path, line)
    for f in fields.values():
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
            value = safe_yaml(raw, f"--set {key.strip()}") if raw.strip() else ""
        except NlpseqError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def _merge_overrides(raw: dict, parsed: dict[str, dict[str, Any]]) -> None:
    """Apply parsed ``--set`` values onto the pipeline dict ``raw`` (in place)."""
    for section, values in parsed.items():
        if section == "task":
            raise NlpseqError("the task cannot be overridden with --set")
        if section not in raw or raw[section] is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise NlpseqError(f"--set {section}.*: {section} is not a section")
        raw[section].update(values)


def _check_sections(raw: dict, path: str | None, lines: dict[str, int]) -> str:
    """Refuse unknown sections and unknown tasks; return the task name."""
    # tune: the search space that `nlpseq tune` reads (nlpseq/tuning.py); training ignores it
    valid = ["task", "model", *SECTIONS, "tune"]
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise NlpseqError(f"unknown section {key!r}{hint}", path, lines.get(str(key)))
    task, names = raw.get("task"), task_names()
    if not isinstance(task, str) or task not in names:
        raise NlpseqError(
            f"task must be one of {', '.join(names)}, got {task!r}", path, lines.get("task")
        )
    return task


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
    _merge_overrides(raw, parsed)
    task = _check_sections(raw, path, lines)
    task_cls = _task_class(task)
    built: dict[str, Any] = {"task": task}
    for section, cls in [*SECTIONS.items(), ("model", task_cls.ModelConfig)]:
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise NlpseqError(f"section {section} must be a mapping", path, lines.get(section))
        built[section] = _build_section(cls, values, section, task, path, lines, overridden)
    formats = tuple(task_cls.formats)
    if "format" not in (raw.get("data") or {}):
        built["data"] = dataclasses.replace(built["data"], format=formats[0])
    elif built["data"].format not in formats:
        key, *where = _located("data.format", path, lines, overridden)
        raise NlpseqError(f"{key}: the {task} task reads {' or '.join(formats)}, "
                          f"not {built['data'].format}", *where)
    config = PipelineConfig(**built, source=str(path or ""))
    if config.embeddings.lazy_updates and config.train.optimizer == "sgd":
        key, *where = _located("embeddings.lazy_updates", path, lines, overridden)
        raise NlpseqError(f"{key} needs train.optimizer adam or adamw, not sgd", *where)
    if config.embeddings.word2vec_text and not config.embeddings.word2vec_dim:
        key, *where = _located("embeddings.word2vec_text", path, lines, overridden)
        raise NlpseqError(f"{key} needs embeddings.word2vec_dim > 0", *where)
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
    raw = safe_yaml(text, str(path))
    return config_from_dict(raw, str(path), overrides, _key_lines(text, str(path)))


#: most values a YAML document may expand to through aliases (a pipeline has about a hundred)
MAX_YAML_NODES = 10_000


def safe_yaml(text: str, path: str | None = None) -> Any:
    """Parse YAML with plain types only (no tags that build Python objects); a document whose
    aliases would expand to more than :data:`MAX_YAML_NODES` values (an "alias bomb") or that
    nests too deeply is refused before anything walks it."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expansion(node, path)
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise NlpseqError(f"invalid YAML: {getattr(err, 'problem', err)}", path, line) from None
    except RecursionError:
        raise NlpseqError("invalid YAML: nested too deeply", path) from None


def _check_expansion(root: yaml.Node, path: str | None) -> None:
    """Count the values ``root`` expands to, each alias counted as often as it is used."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a recursive alias counts once
            children = node.value if isinstance(node, yaml.SequenceNode) else (
                [n for pair in node.value for n in pair]
                if isinstance(node, yaml.MappingNode) else [])
            sizes[id(node)] = min(1 + sum(size(child) for child in children),
                                  MAX_YAML_NODES + 1)
        return sizes[id(node)]

    if size(root) > MAX_YAML_NODES:
        raise NlpseqError(f"YAML expands to more than {MAX_YAML_NODES:,} values through "
                          "aliases (&anchor/*alias); write the values out", path,
                          root.start_mark.line + 1)


def save_config(config: PipelineConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (the caller makes the write atomic)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


# --- reference documentation -------------------------------------------------------------


def _type_text(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{c}`" for c in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`" if value != "" else '`""`'


def _section_table(cls: type, tasks: bool) -> list[str]:
    """Markdown table rows of every key of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    columns = ["key", "type", "default", "range", *(["tasks"] if tasks else []), "meaning"]
    rows = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for f in dataclasses.fields(cls):
        task_text = f.metadata.get("tasks", ALL)
        cells = [f"`{f.name}`", _type_text(hints[f.name]), _default_text(f.default),
                 describe_range(f)]
        if tasks:
            cells.append(task_text if task_text == ALL else ", ".join(task_text))
        cells.append(f.metadata.get("help", "").replace("|", "\\|"))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def config_reference() -> str:
    """``docs/config.md``: every key of every section with its type, default, range, the
    tasks it applies to and its meaning (``python -m nlpseq.config > docs/config.md``)."""
    out = ["# Pipeline keys", "",
           "Generated from the key declarations (`python -m nlpseq.config > docs/config.md`);",
           "edit those, not this page. A key written for a task it does not apply to is an",
           "error, as is an unknown key. Numbers must be finite.", ""]
    for section, cls in SECTIONS.items():
        out += [f"## {section}", "", (cls.__doc__ or "").strip(), "", *_section_table(cls, True),
                ""]
    for name in task_names():
        task = _task_class(name)
        model, formats = task.ModelConfig, [f"`{f}`" for f in task.formats]
        doc = " ".join((model.__doc__ or "").split())
        reads = f"The {name} task reads data.format {formats[0]} (the default)" + (
            f" or {', '.join(formats[1:])}." if len(formats) > 1 else ".")
        out += [f"## model ({name}: `{model.__name__}`)", "", doc, "", reads, "",
                *_section_table(model, False), ""]
    return "\n".join(out)


if __name__ == "__main__":
    from nlpseq.config import config_reference as _reference  # the module the tasks import

    print(_reference(), end="")
