"""Label and tag vocabularies: strings <-> contiguous ids, saved as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from nlpseq.errors import NlpseqError


class LabelVocab:
    """An ordered set of labels. Ids follow sorted order so runs are reproducible."""

    def __init__(self, labels: Iterable[str]):
        self.labels: list[str] = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        if len(self.index) != len(self.labels):
            raise ValueError("duplicate labels")

    @classmethod
    def from_data(cls, labels: Iterable[str]) -> LabelVocab:
        return cls(sorted(set(labels)))

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, label: str, path: str | None = None, line: int | None = None) -> int:
        """Label -> id; a label not seen in training is an error naming where it came from."""
        try:
            return self.index[label]
        except KeyError:
            known = ", ".join(self.labels[:10])
            raise NlpseqError(f"unknown label {label!r} (known: {known})", path, line) from None

    def decode(self, index: int) -> str:
        return self.labels[index]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"labels": self.labels}, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LabelVocab:
        try:
            labels = json.loads(Path(path).read_text(encoding="utf-8"))["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise ValueError("'labels' must be a list of strings")
            return cls(labels)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise NlpseqError(f"cannot read label vocabulary: {err}", path) from None
