"""Tiny data for the tests: labelled sentences, TSV files, pipelines, embeddings."""

from __future__ import annotations

import os
import random
from pathlib import Path

POSITIVE = ["good", "great", "fine", "lovely", "warm"]
NEGATIVE = ["bad", "awful", "dull", "boring", "flat"]


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
    path.write_text("label\ttext\n" + "".join(f"{lab}\t{text}\n" for lab, text in rows),
                    encoding="utf-8")
    return path


PIPELINE = """\
task: sentiment
data:
  format: tsv
  train: {train}
  dev: {dev}
tokenizer:
  kind: word
  lowercase: true
model:
  cell: {cell}
  embedding_dim: 8
  hidden_size: 8
  pooling: {pooling}
  dropout: 0.0
train:
  epochs: {epochs}
  batch_size: 4
  lr: 0.05
  patience: 0
  seed: 7
  device: cpu
  threads: 1
"""


def write_pipeline(
    directory: Path, corpus: dict[str, Path], *, epochs: int = 6, cell: str = "lstm",
    pooling: str = "max-mean", name: str = "pipeline.yaml", lazy: bool = False,
) -> Path:
    """A tiny sentiment pipeline YAML over ``corpus`` (one CPU thread, 8-unit model);
    ``lazy``: lazy embedding updates."""
    path = directory / name
    text = PIPELINE.format(train=corpus["train"], dev=corpus["dev"], epochs=epochs, cell=cell,
                           pooling=pooling)
    if lazy:
        text += "embeddings:\n  lazy_updates: true\n"
    path.write_text(text, encoding="utf-8")
    return path


PROBES = ["the film is very good", "the cast is awful", "a lovely plot", "zzz unseen", ""]


GLOVE = """\
the 0.1 0.2 0.3
film 0.4 0.5 0.6
Paris 1.0 1.0 1.0
good -0.1 -0.2 -0.3
0000 0.7 0.8 0.9
"""

# Real-corpus runs (tests/test_slow_*.py): the repository and the shared corpora beside it.
ROOT = Path(__file__).resolve().parent.parent
CORPORA = os.environ.get("NLPSEQ_CORPORA", str(ROOT.parent / "shared" / "corpora"))


def assert_one_line_error(result, *fragments: str) -> str:
    """A CLI result that failed as bad input should: exit 1, exactly one line on stderr
    holding every fragment, no traceback. Returns that line."""
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
