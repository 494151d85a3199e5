"""What the tests share: tiny data, tiny pipelines per task, running the CLI in-process.

pytest puts this folder on ``sys.path`` (``pythonpath`` in pyproject.toml), so ``from helpers
import ...`` works under every import mode, ``importlib`` included.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parent.parent
# Real-corpus runs (tests/test_slow_*.py) read the shared corpora beside the repository.
CORPORA = os.environ.get("NLPSEQ_CORPORA", str(ROOT.parent / "shared" / "corpora"))

POSITIVE = ["good", "great", "fine", "lovely", "warm"]
NEGATIVE = ["bad", "awful", "dull", "boring", "flat"]
PROBES = ["the film is very good", "the cast is awful", "a lovely plot", "zzz unseen", ""]

GLOVE = """\
the 0.1 0.2 0.3
film 0.4 0.5 0.6
Paris 1.0 1.0 1.0
good -0.1 -0.2 -0.3
0000 0.7 0.8 0.9
"""


def sentences(seed: int, n: int) -> list[tuple[str, str]]:
    """Deterministic ``(label, text)`` pairs: the label is readable from one word."""
    rng = random.Random(seed)
    subjects = ["the film", "this movie", "the plot", "the cast"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        rows.append((label, f"{rng.choice(subjects)} is {'very ' * rng.randint(0, 2)}{word}"))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """``rows`` as a labelled TSV file with a ``label\\ttext`` header; returns ``path``."""
    path.write_text("label\ttext\n" + "".join(f"{lab}\t{text}\n" for lab, text in rows),
                    encoding="utf-8")
    return path


_CPU = {"patience": 0, "device": "cpu", "threads": 1, "curves": False}

# One tiny pipeline per task: small enough to train in seconds on one CPU thread.
PIPELINES: dict[str, dict[str, Any]] = {
    "sentiment": {
        "task": "sentiment",
        "data": {"format": "tsv"},
        "tokenizer": {"kind": "word", "lowercase": True},
        "model": {"cell": "lstm", "embedding_dim": 8, "hidden_size": 8, "pooling": "max-mean",
                  "dropout": 0.0},
        "train": {"epochs": 6, "batch_size": 4, "lr": 0.05, "seed": 7, **_CPU},
    },
    "ner": {
        "task": "ner",
        "data": {"format": "conll", "tag_scheme": "iob1"},
        "tokenizer": {"kind": "word", "lowercase": True},
        "model": {"embedding_dim": 16, "hidden_size": 24, "char_encoder": "cnn",
                  "char_embedding_dim": 8, "char_hidden_size": 12, "casing_dim": 4,
                  "dropout": 0.0, "embedding_dropout": 0.0, "output": "crf",
                  "frozen_vectors": False},
        "train": {"epochs": 40, "batch_size": 3, "lr": 0.02, "schedule": "none", "seed": 3,
                  **_CPU},
    },
    "chargen": {
        "task": "chargen",
        "data": {"format": "text"},
        "tokenizer": {"kind": "char"},
        "model": {"cell": "lstm", "embedding_dim": 16, "hidden_size": 48, "layers": 1,
                  "seq_len": 24, "eval_context": 8},
        "train": {"epochs": 40, "batch_size": 4, "lr": 0.01, "schedule": "none", "seed": 3,
                  **_CPU},
        "eval": {"batch_size": 2},
    },
    "translate": {
        "task": "translate",
        "data": {"format": "parallel", "max_source_length": 50, "max_target_length": 50},
        "tokenizer": {"kind": "bpe", "joint": True, "max_size": 100},
        "model": {"cell": "gru", "embedding_dim": 32, "hidden_size": 64, "attention": "general",
                  "dropout": 0.0, "label_smoothing": 0.0},
        "train": {"epochs": 40, "batch_size": 5, "lr": 0.01, "schedule": "none",
                  "evals_per_epoch": 1, "seed": 3, **_CPU},
        "eval": {"beam": 3},
    },
    "forecast": {
        "task": "forecast",
        "data": {"format": "m4"},
        "model": {"hidden_size": 8, "input_length": 8, "patch": 4, "horizon": 4, "season": 4},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.01, "seed": 3, "curves": False,
                  **_CPU},
    },
}


def write_pipeline(
    directory: Path, task: str, data: Mapping[str, str | Path],
    settings: Mapping[str, Any] | None = None, *, name: str | None = None,
) -> Path:
    """Write the tiny pipeline of ``task`` (a key of :data:`PIPELINES`) to
    ``directory / name`` (default ``{task}.yaml``) and return its path.

    ``data`` fills the ``data`` section (``{"train": path, "dev": path}``); ``settings`` are
    dotted keys as ``--set`` takes them (``{"train.epochs": 2, "embeddings.path": p}``).
    """
    pipeline = copy.deepcopy(PIPELINES[task])
    pipeline["data"].update({key: str(value) for key, value in data.items()})
    for dotted, value in (settings or {}).items():
        *sections, key = dotted.split(".")
        table = pipeline
        for section in sections:
            table = table.setdefault(section, {})
        table[key] = str(value) if isinstance(value, Path) else value
    path = directory / (name or f"{task}.yaml")
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False), encoding="utf-8")
    return path


def invoke(*args: object, input: str | bytes | None = None, check: bool = False) -> Result:
    """Run the ``nlpseq`` command in-process with ``args`` (each passed through ``str``) and
    ``input`` on stdin; ``check``: assert that it exited 0."""
    from nlpseq.cli import main

    result = CliRunner().invoke(main, [str(arg) for arg in args], input=input)
    if check:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """A CLI result that failed as bad input should: exit 1, exactly one line on stderr
    holding every fragment, no traceback. Returns that line."""
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
