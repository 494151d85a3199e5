"""What every task provides to the trainer, the checkpoint code and the CLI.

A task object owns the task's artifacts (tokenizer, vocabularies), turns corpora into
batches, builds its model, evaluates it and, once loaded from a run directory, predicts.
``nlpseq.load(run_dir)`` returns a task object with its model: that is the predictor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nlpseq.config import PipelineConfig

Log = Callable[[str], None]


class Task(ABC):
    """Base class; see :class:`nlpseq.tasks.sentiment.SentimentTask` for a complete example."""

    name: ClassVar[str]
    #: dev metrics usable for model selection -> True when higher is better
    metrics: ClassVar[dict[str, bool]]
    default_metric: ClassVar[str]

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.model: nn.Module | None = None
        self.device = torch.device("cpu")

    # --- training side -------------------------------------------------------------------
    @abstractmethod
    def prepare(self, log: Log, artifacts: Path | None = None) -> None:
        """Read the training and dev data and fit the artifacts (tokenizer, vocabularies),
        or, when ``artifacts`` names a run directory (resume), load them from there."""

    @abstractmethod
    def save_artifacts(self, directory: Path) -> None:
        """Write tokenizer and vocabularies into a run directory (atomically)."""

    @abstractmethod
    def load_artifacts(self, directory: Path) -> None:
        """Read what :meth:`save_artifacts` wrote."""

    @abstractmethod
    def build_model(self, log: Log, pretrained: bool = True) -> nn.Module:
        """A fresh model; with ``pretrained`` it starts from pretrained embeddings."""

    @abstractmethod
    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[Any]:
        """This rank's training batches for ``epoch`` (same count on every rank)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Dev metrics of ``model`` (includes every key of :attr:`metrics`)."""

    def train_carry(self) -> Any:
        """Initial recurrent state carried across training batches (stateful tasks only)."""
        return None

    # --- inference side ------------------------------------------------------------------
    @abstractmethod
    def evaluate_files(self, paths: list[str]) -> dict[str, Any]:
        """Metrics of the loaded model on data files (the CLI ``evaluate`` command)."""

    @abstractmethod
    def predict_lines(self, lines: Iterable[str], as_json: bool = False) -> Iterator[str]:
        """One output per input line (the CLI ``predict`` command)."""

    def to(self, device: torch.device | str) -> Task:
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self


def text_list(texts: Iterable[Any], method: str) -> list[Any]:
    """``texts`` as a list; a bare string is refused, since iterating it would silently
    predict one result per character."""
    if isinstance(texts, str):
        raise TypeError(f"{method} takes a list of texts; for one text, pass [text]")
    return list(texts)


def shard(batches: list[Any], rank: int, world_size: int) -> list[Any]:
    """Every ``world_size``-th batch from ``rank``, trimmed so all ranks get the same count
    (DistributedDataParallel needs equal steps on every rank)."""
    if world_size == 1:
        return batches
    per_rank = len(batches) // world_size
    return batches[rank::world_size][:per_rank]
