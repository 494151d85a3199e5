"""Classification metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from nlpseq.metrics import ClassificationCounts, LossCounts, prf


def test_prf_edge_cases():
    assert prf(0, 0, 0) == (0.0, 0.0, 0.0)
    assert prf(2, 2, 0) == (0.5, 1.0, pytest.approx(2 / 3))


def test_three_classes_by_hand():
    # gold:      a a a a b b b c c c
    # predicted: a a b c b b a c a c
    labels = ["a", "b", "c"]
    gold = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    pred = [0, 0, 1, 2, 1, 1, 0, 2, 0, 2]
    counts = ClassificationCounts(labels)
    counts.add(gold[:4], pred[:4])  # summed over two "batches"
    counts.add(gold[4:], pred[4:])
    r = counts.result()
    # a: tp 2, fp 2 (b->a, c->a), fn 2 -> P 1/2, R 1/2, F 1/2
    # b: tp 2, fp 1 (a->b), fn 1 -> P 2/3, R 2/3, F 2/3
    # c: tp 2, fp 1 (a->c), fn 1 -> P 2/3, R 2/3, F 2/3
    assert r["n"] == 10
    assert r["accuracy"] == pytest.approx(60.0)
    assert r["per_class"]["a"] == pytest.approx(
        {"precision": 50.0, "recall": 50.0, "f1": 50.0, "support": 4})
    for label in "bc":
        assert r["per_class"][label] == pytest.approx(
            {"precision": 200 / 3, "recall": 200 / 3, "f1": 200 / 3, "support": 3})
    macro = (50 + 200 / 3 + 200 / 3) / 3
    assert r["macro_precision"] == pytest.approx(macro)
    assert r["macro_recall"] == pytest.approx(macro)
    assert r["macro_f1"] == pytest.approx(macro)
    assert r["micro_f1"] == pytest.approx(60.0)  # micro P = R = F1 = accuracy


def test_unbalanced_binary_by_hand():
    # gold: 8 neg, 2 pos; the model says pos once, wrongly, and misses both positives.
    counts = ClassificationCounts(["neg", "pos"])
    counts.add([0] * 8 + [1, 1], [0] * 7 + [1] + [0, 0])
    r = counts.result()
    # neg: tp 7, fp 2, fn 1 -> P 7/9, R 7/8, F 2*7/(9+8) = 14/17; pos: all zero
    assert r["accuracy"] == pytest.approx(70.0)
    assert r["per_class"]["neg"]["precision"] == pytest.approx(700 / 9)
    assert r["per_class"]["neg"]["recall"] == pytest.approx(87.5)
    assert r["per_class"]["neg"]["f1"] == pytest.approx(1400 / 17)
    assert r["per_class"]["pos"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert r["macro_f1"] == pytest.approx(700 / 17)
    assert r["macro_precision"] == pytest.approx(350 / 9)
    assert r["macro_recall"] == pytest.approx(43.75)


def test_empty_counts():
    r = ClassificationCounts(["a", "b"]).result()
    assert r["n"] == 0 and r["accuracy"] == 0.0 and r["macro_f1"] == 0.0


def test_loss_counts_are_summed_not_averaged():
    counts = LossCounts()
    counts.add(10.0, 10)  # mean 1.0 over 10 tokens
    counts.add(3.0, 1)  # mean 3.0 over 1 token
    r = counts.result()
    assert r["loss"] == pytest.approx(13 / 11)
    assert r["perplexity"] == pytest.approx(math.exp(13 / 11))
    assert r["bits"] == pytest.approx(13 / 11 / math.log(2))
    assert r["tokens"] == 11


def test_loss_counts_name_their_figures_and_give_nan_when_empty():
    counts = LossCounts(bits_key="bpc", count_key="n_chars")
    counts.add(math.log(2) * 3, 3)  # one bit per character
    assert counts.result() == {"loss": math.log(2), "bpc": 1.0, "perplexity": 2.0, "n_chars": 3}
    empty = LossCounts().result()
    assert empty["tokens"] == 0
    assert all(math.isnan(empty[k]) for k in ("loss", "bits", "perplexity"))
