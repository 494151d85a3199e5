"""What every task provides to the trainer, the checkpoint code and the CLI.

A task object owns the task's artifacts (tokenizer, vocabularies) and its model: it turns
corpora into batches, builds the model (:meth:`Task.init_model`), evaluates it and, loaded
from a run directory (:meth:`Task.from_run`), predicts. The model is only ever set by the
task's own methods. Streaming prediction over lines, the epoch order seed and the
"no dev data" error live here once; a task adds what differs:

* :meth:`read_input` turns input lines into prediction items (default: the lines),
* :meth:`predict` maps a list of items to a list of results,
* :meth:`format_output` prints one result (plain or as JSON).

``commands`` names the CLI commands a task's runs answer beyond ``train`` and ``evaluate``,
and ``input_options`` / ``predict_options`` the keyword options those commands may pass, so
the CLI needs no branch per task.
"""

from __future__ import annotations

import itertools
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from nlpseq.config import PipelineConfig
from nlpseq.errors import NlpseqError
from nlpseq.runtime import release_freed_memory

Log = Callable[[str], None]
Part = TypeVar("Part")

#: items predicted together by :meth:`Task.predict_lines` (bounds memory on endless input)
PREDICT_CHUNK = 1024


class Task(ABC):
    """Base class; see :class:`nlpseq.tasks.sentiment.SentimentTask` for a complete example."""

    name: ClassVar[str]
    #: dev metrics usable for model selection -> True when higher is better
    metrics: ClassVar[dict[str, bool]]
    default_metric: ClassVar[str]
    #: the task's model dataclass (the pipeline's ``model`` section), declared with config.key
    ModelConfig: ClassVar[type]
    #: the data.format values the task reads; the first is the default
    formats: ClassVar[tuple[str, ...]]
    #: CLI commands besides train/evaluate that this task's runs answer
    commands: ClassVar[frozenset[str]] = frozenset({"predict"})
    #: keyword options of :meth:`read_input`, :meth:`predict` and :meth:`evaluate_files`
    input_options: ClassVar[tuple[str, ...]] = ()
    predict_options: ClassVar[tuple[str, ...]] = ()
    evaluate_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PipelineConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.model: nn.Module | None = None
        self.device = torch.device(device)

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

    def init_model(self, log: Log, pretrained: bool = True) -> nn.Module:
        """Build this task's model on its device and keep it."""
        self.model = self.build_model(log, pretrained=pretrained).to(self.device)
        return self.model

    def load_weights(self, path: Path) -> None:
        """Load weights into the task's model and switch it to inference."""
        from nlpseq.checkpoint import load_weights

        load_weights(self.model, path)
        self.model.eval()

    def epoch_seed(self, epoch: int) -> int:
        """The seed of ``epoch``'s batch order: the same order whenever the epoch is run."""
        return self.config.train.seed * 1000 + epoch

    def require_dev(self, present: bool, what: str = "data.dev") -> None:
        if not present:
            raise NlpseqError(f"no dev data: set {what}", self.config.source or None)

    @classmethod
    def from_run(cls, run_dir: Path, config: PipelineConfig, weights: Path,
                 device: torch.device) -> Task:
        """The task of a trained run, with its artifacts and best weights, ready to predict;
        refused when config.yaml was edited in a key that shapes the model."""
        from nlpseq.checkpoint import CONFIG, check_trained_with

        check_trained_with(config, weights.parent, run_dir / CONFIG)
        task = cls(config, device)
        task.load_artifacts(run_dir)
        task.init_model(lambda _message: None, pretrained=False)
        task.load_weights(weights)
        return task

    # --- inference side ------------------------------------------------------------------
    @abstractmethod
    def evaluate_files(self, paths: list[str], **options: Any) -> dict[str, Any]:
        """Metrics of the loaded model on data files (the CLI ``evaluate`` command)."""

    @abstractmethod
    def predict(self, items: list[Any], **options: Any) -> list[Any]:
        """One result per item, in order."""

    def format_output(self, result: Any, as_json: bool) -> str:
        """One result as printed by ``predict``: JSON, or the task's plain form."""
        return json.dumps(result, ensure_ascii=False)

    def read_input(self, lines: Iterator[str], **options: Any) -> Iterator[Any]:
        """Prediction items from input lines (default: one item a line)."""
        return lines

    def require(self, command: str) -> Task:
        """Refuse a CLI command this task's runs do not answer, naming those they do."""
        if command not in self.commands:
            offered = ", ".join(sorted(self.commands)) or "only train and evaluate"
            raise NlpseqError(f"{command} needs a run of a task that offers it; this is a "
                              f"{self.name} run, which answers {offered}")
        return self

    def check_options(self, options: dict[str, Any], evaluating: bool = False) -> None:
        """Refuse an option this task does not take (for ``predict``, or with ``evaluating``
        for ``evaluate``), naming it."""
        allowed = set(self.evaluate_options) if evaluating else \
            {*self.input_options, *self.predict_options}
        for option in options:
            if option not in allowed:
                raise NlpseqError(f"option {option!r} does not apply to a {self.name} run")

    def predict_lines(self, lines: Iterable[str], as_json: bool = False,
                      **options: Any) -> Iterator[str]:
        """Streamed prediction: outputs for the first lines appear while later lines are still
        being read, and memory stays bounded by :data:`PREDICT_CHUNK` items."""
        self.check_options(options)
        reading = {k: v for k, v in options.items() if k in self.input_options}
        predicting = {k: v for k, v in options.items() if k in self.predict_options}
        items = iter(self.read_input(iter(lines), **reading))
        chunks = iter(lambda: list(itertools.islice(items, PREDICT_CHUNK)), [])
        for chunk in between_parts(chunks):
            for result in self.predict_records(chunk, **predicting):
                yield self.format_output(result, as_json)

    def predict_records(self, items: list[Any], **options: Any) -> list[Any]:
        """What ``predict`` prints for each item (default: :meth:`predict`'s results)."""
        return self.predict(items, **options)

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


def between_parts(parts: Iterable[Part]) -> Iterator[Part]:
    """``parts`` of a streamed input, handing the memory the previous part freed back to the
    OS before the next is read (see :func:`nlpseq.runtime.release_freed_memory`)."""
    for part in parts:
        yield part
        release_freed_memory()
