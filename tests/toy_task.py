"""A task defined outside nlpseq, as a user or a new contributor would add one: one model
(with its config), one task module, one row in the task table (see test_toy_task.py).

The toy task reads lines ``label<TAB>text`` over the letters a and b and predicts which letter
the text holds more of.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nlpseq.config import key
from nlpseq.errors import NlpseqError
from nlpseq.tasks.base import Log, Task, shard

LETTERS = "ab"


@dataclass(frozen=True)
class CounterConfig:
    """GRU over letters (the ``model`` section of toy pipelines)."""

    hidden_size: int = key(8, low=1, help="GRU units")


@dataclass
class Batch:
    ids: Tensor  # (B, T) letter ids, 0 = padding
    labels: Tensor  # (B,)

    @property
    def num_tokens(self) -> int:
        return int((self.ids > 0).sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.ids.to(device), self.labels.to(device))


class Counter(nn.Module):
    def __init__(self, config: CounterConfig):
        super().__init__()
        self.embedding = nn.Embedding(len(LETTERS) + 1, 4, padding_idx=0)
        self.rnn = nn.GRU(4, config.hidden_size, batch_first=True)
        self.output = nn.Linear(config.hidden_size, len(LETTERS))

    def logits(self, ids: Tensor) -> Tensor:
        states, _ = self.rnn(self.embedding(ids))  # (B, T, H); padding at the start
        return self.output(states[:, -1])  # (B, 2)

    def forward(self, batch: Batch, carry: None = None) -> tuple[Tensor, int, None]:
        loss = nn.functional.cross_entropy(self.logits(batch.ids), batch.labels, reduction="sum")
        return loss, len(batch.labels), None


class ToyTask(Task):
    name = "toy"
    ModelConfig = CounterConfig
    formats = ("lines",)
    metrics = {"accuracy": True}
    default_metric = "accuracy"

    def prepare(self, log: Log, artifacts: Path | None = None) -> None:
        self.train = self._read(self.config.data.train)
        self.dev = self._read(self.config.data.dev) if self.config.data.dev else []

    def _read(self, path: str) -> list[tuple[str, int]]:
        rows = []
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            label, _, text = line.partition("\t")
            if label not in LETTERS:
                raise NlpseqError(f"label {label!r} is not a or b", path, number)
            rows.append((text, LETTERS.index(label)))
        return rows

    def save_artifacts(self, directory: Path) -> None:
        pass  # the alphabet is fixed

    def load_artifacts(self, directory: Path) -> None:
        pass

    def build_model(self, log: Log, pretrained: bool = True) -> nn.Module:
        return Counter(self.config.model)

    def _batch(self, rows: list[tuple[str, int]]) -> Batch:
        width = max(1, max(len(text) for text, _ in rows))
        ids = [[0] * (width - len(text)) + [LETTERS.index(c) + 1 for c in text]
               for text, _ in rows]
        return Batch(torch.tensor(ids), torch.tensor([label for _, label in rows]))

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[Batch]:
        order = torch.randperm(len(self.train),
                               generator=torch.Generator().manual_seed(self.epoch_seed(epoch)))
        size = self.config.train.batch_size
        batches = [self._batch([self.train[i] for i in order[s:s + size].tolist()])
                   for s in range(0, len(order), size)]
        return shard(batches, rank, world_size)

    @torch.no_grad()
    def _accuracy(self, model: nn.Module, rows: list[tuple[str, int]]) -> dict[str, Any]:
        model.eval()
        batch = self._batch(rows).to(self.device)
        right = (model.logits(batch.ids).argmax(-1) == batch.labels).sum()
        return {"accuracy": 100.0 * float(right) / len(rows), "n": len(rows)}

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        self.require_dev(bool(self.dev))
        return self._accuracy(model, self.dev)

    def evaluate_files(self, paths: list[str], **options: Any) -> dict[str, Any]:
        return self._accuracy(self.model, [row for p in paths for row in self._read(p)])

    @torch.no_grad()
    def predict(self, texts: list[str]) -> list[str]:
        self.model.eval()
        batch = self._batch([(text.strip(), 0) for text in texts]).to(self.device)
        return [LETTERS[i] for i in self.model.logits(batch.ids).argmax(-1).tolist()]

    def format_output(self, result: str, as_json: bool) -> str:
        return f'{{"label": "{result}"}}' if as_json else result
