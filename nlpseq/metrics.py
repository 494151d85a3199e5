"""Metrics from summed counts: accumulate over batches, derive the figures at the end."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall, F1 (fractions in [0, 1]; 0 where undefined)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class ClassificationCounts:
    """Accuracy and per-class / macro / micro precision, recall and F1 (as percentages), with
    the confusion counts ``[gold][predicted]``."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        k = len(self.labels)
        self.confusion = [[0] * k for _ in range(k)]  # [gold][predicted]

    def add(self, gold: Sequence[int], predicted: Sequence[int]) -> None:
        for g, p in zip(gold, predicted):
            self.confusion[g][p] += 1

    @property
    def n(self) -> int:
        return sum(map(sum, self.confusion))

    def result(self) -> dict:
        k = len(self.labels)
        correct = sum(self.confusion[i][i] for i in range(k))
        per_class = {}
        sums = [0.0, 0.0, 0.0]
        for i, label in enumerate(self.labels):
            tp = self.confusion[i][i]
            fp = sum(self.confusion[g][i] for g in range(k)) - tp
            fn = sum(self.confusion[i]) - tp
            p, r, f = prf(tp, fp, fn)
            per_class[label] = {
                "precision": 100 * p, "recall": 100 * r, "f1": 100 * f,
                "support": sum(self.confusion[i]),
            }
            sums = [sums[0] + p, sums[1] + r, sums[2] + f]
        n = self.n
        # Micro P = R = F1 = accuracy for single-label classification.
        accuracy = 100 * correct / n if n else 0.0
        return {
            "accuracy": accuracy,
            "macro_precision": 100 * sums[0] / k if k else 0.0,
            "macro_recall": 100 * sums[1] / k if k else 0.0,
            "macro_f1": 100 * sums[2] / k if k else 0.0,
            "micro_f1": accuracy,
            "per_class": per_class,
            "confusion": {"labels": list(self.labels), "counts": [r[:] for r in self.confusion]},
            "n": n,
        }


class LossCounts:
    """Summed loss in nats over summed predicted units: loss per unit, bits per unit and
    perplexity, derived from the totals (never a mean of batch means). ``bits_key`` and
    ``count_key`` name the bits and the count in :meth:`result` (the char LM reports ``bpc``
    and ``n_chars``)."""

    def __init__(self, bits_key: str = "bits", count_key: str = "tokens") -> None:
        self.bits_key, self.count_key = bits_key, count_key
        self.loss = 0.0
        self.tokens = 0

    def add(self, loss_sum: float, tokens: int) -> None:
        self.loss += float(loss_sum)
        self.tokens += int(tokens)

    def result(self) -> dict:
        """NaN figures when nothing was counted."""
        mean = self.loss / self.tokens if self.tokens else float("nan")
        return {
            "loss": mean,
            self.bits_key: mean / math.log(2),
            "perplexity": math.exp(mean) if not mean >= 700 else float("inf"),
            self.count_key: self.tokens,
        }


class TranslationCounts:
    """Corpus BLEU and chrF from sacreBLEU (cased, on detokenized text), with signatures, from
    n-gram statistics summed over parts of a corpus: corpus BLEU sums its statistics over
    every sentence before taking ratios, so the parts give exactly the whole corpus's score.
    Each hypothesis has one reference."""

    def __init__(self) -> None:
        from sacrebleu.metrics import BLEU, CHRF  # heavy: imported only when scoring

        self.metrics = {"bleu": BLEU(), "chrf": CHRF()}
        self.sums: dict[str, np.ndarray] = {}
        self.n = 0

    def add(self, hypotheses: Sequence[str], references: Sequence[str]) -> None:
        for name, metric in self.metrics.items():
            # sacreBLEU's per-sentence statistics, as its own corpus_score gathers them
            stats = np.asarray(metric._extract_corpus_statistics(hypotheses, [references]))
            self.sums[name] = self.sums.get(name, 0) + stats.sum(axis=0)
        self.n += len(hypotheses)

    def result(self) -> dict:
        scores = {name: (metric._compute_score_from_stats(self.sums[name].tolist()).score
                         if name in self.sums else 0.0)
                  for name, metric in self.metrics.items()}
        return {
            "bleu": scores["bleu"],
            "chrf": scores["chrf"],
            "signature": str(self.metrics["bleu"].get_signature()),
            "chrf_signature": str(self.metrics["chrf"].get_signature()),
            "n": self.n,
        }


def translation_scores(hypotheses: list[str], references: list[str]) -> dict:
    """:class:`TranslationCounts` of one whole corpus."""
    counts = TranslationCounts()
    counts.add(hypotheses, references)
    return counts.result()
