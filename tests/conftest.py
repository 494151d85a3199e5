"""Shared fixtures (tiny corpora, pipelines, a trained run) and the native-kernel policy.

Everything here is small enough to train in a second or two on one CPU thread.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import GLOVE, PROBES, sentences, write_pipeline, write_tsv

# Two CPU cores are shared by several people: one thread per test process.
torch.set_num_threads(1)

# Keep the datasets cache of the many tiny tables out of the user's home, and never go online.
_HF_CACHE = tempfile.mkdtemp(prefix="nlpseq-tests-hf-")
os.environ.setdefault("HF_DATASETS_CACHE", _HF_CACHE)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HF_CACHE, ignore_errors=True)


# --- native kernels ------------------------------------------------------------------------
# Tests marked `native` exercise nlpseq's C++ kernels (nlpseq/native.py). Where they cannot be
# built, each such test is skipped with the reason, the build error's first line. Under CI
# (the environment variable CI set, as CI services do) the same test fails instead: a CI run
# must show that the kernels were built and tested, not that everything was skipped.


def in_ci() -> bool:
    """Whether the environment variable ``CI`` is set to anything but empty/0/false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def native_unavailable() -> str | None:
    """Why the native kernels cannot be used here (one line), or None where they load."""
    from nlpseq import native

    if os.environ.get("NLPSEQ_NATIVE", "1") == "0":
        return "NLPSEQ_NATIVE=0 turns them off"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if native.load():
            return None
    try:
        native.build()  # load() only warns: the build's own error says why
    except Exception as error:  # any build failure is the reason
        return str(error).strip().splitlines()[0]
    lines = [str(w.message).splitlines()[0] for w in caught]
    return lines[0] if lines else "native.load() returned False"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("native") is None:
        return
    reason = native_unavailable()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"native kernels unavailable under CI: {reason}", pytrace=False)
    pytest.skip(f"native kernels unavailable: {reason}")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if native_unavailable.cache_info().currsize:  # only where a `native` test asked
        reason = native_unavailable()
        status = "built and loaded" if reason is None else f"unavailable ({reason})"
        terminalreporter.write_line(f"nlpseq native kernels: {status}")


# --- tiny data -----------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    """A tiny labelled corpus: 24 training and 8 dev rows (labels ``pos``/``neg``)."""
    return {
        "train": write_tsv(tmp_path / "train.tsv", sentences(1, 24)),
        "dev": write_tsv(tmp_path / "dev.tsv", sentences(2, 8)),
    }


@pytest.fixture
def pipeline(tmp_path: Path, corpus: dict[str, Path]) -> Path:
    """The tiny sentiment pipeline over :func:`corpus`."""
    return write_pipeline(tmp_path, "sentiment", corpus)


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
    config = load_config(write_pipeline(base, "sentiment", data, {"train.epochs": 8}),
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
