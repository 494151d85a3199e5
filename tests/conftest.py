"""Shared tiny fixtures for the foundation tests: corpora, embeddings, pipelines, a trained run.

Everything here is small enough to train in a second or two on one CPU thread.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny import GLOVE, PROBES, sentences, write_pipeline, write_tsv

# Two CPU cores are shared by several people: one thread per test process.
torch.set_num_threads(1)

# Keep the datasets cache of the many tiny tables out of the user's home, and never go online.
_HF_CACHE = tempfile.mkdtemp(prefix="nlpseq-tests-hf-")
os.environ.setdefault("HF_DATASETS_CACHE", _HF_CACHE)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HF_CACHE, ignore_errors=True)


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    """A tiny labelled corpus: 24 training and 8 dev rows (labels ``pos``/``neg``)."""
    return {
        "train": write_tsv(tmp_path / "train.tsv", sentences(1, 24)),
        "dev": write_tsv(tmp_path / "dev.tsv", sentences(2, 8)),
    }


@pytest.fixture
def pipeline(tmp_path: Path, corpus: dict[str, Path]) -> Path:
    return write_pipeline(tmp_path, corpus)


@dataclass
class TrainedRun:
    """A run directory and what the in-memory model predicted for :data:`PROBES`."""

    run_dir: Path
    corpus: dict[str, Path]
    predictions: list[dict]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One tiny sentiment model trained once and shared (read-only) by the tests."""
    from nlpseq.config import load_config
    from nlpseq.trainer import train

    base = tmp_path_factory.mktemp("trained")
    data = {
        "train": write_tsv(base / "train.tsv", sentences(1, 24)),
        "dev": write_tsv(base / "dev.tsv", sentences(2, 8)),
    }
    # Selecting on dev loss keeps the last (best-fitted) epoch; accuracy saturates early.
    # Lazy embedding updates, as the shipped sentiment pipelines train.
    config = load_config(write_pipeline(base, data, epochs=8),
                         ["eval.metric=loss", "embeddings.lazy_updates=true"])
    result = train(config, base / "run", log=lambda _m: None, progress=False)
    assert result.metrics["dev"]["accuracy"] == 100.0, result.history
    return TrainedRun(base / "run", data, result.task.predict(PROBES))


@pytest.fixture
def glove_file(tmp_path: Path) -> Path:
    """A GloVe-format text file (no header) with 5 words of dimension 3."""
    path = tmp_path / "vectors.txt"
    path.write_text(GLOVE, encoding="utf-8")
    return path
