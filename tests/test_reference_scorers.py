"""nlpseq's scores against independent scorers on imperfect output: sacreBLEU for BLEU/chrF,
conlleval's span figures (as seqeval computes them) for NER."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sacrebleu

from nlpseq.metrics import translation_scores
from nlpseq.tagschemes import SpanF1

DATA = Path(__file__).resolve().parent / "data"

# Hand-written references and imperfect system outputs, German (one reference each): wrong
# words, dropped and added words, reordering, punctuation and case errors, an empty output.
REFERENCES_DE = [
    "Der Mann läuft schnell über die Straße.",
    "Die Kinder spielen im Garten mit einem roten Ball.",
    "Ich habe gestern ein Buch über die Geschichte Berlins gelesen.",
    "Wir treffen uns morgen um acht Uhr am Bahnhof.",
    "Das Wetter ist heute nicht so schön wie gestern.",
    "Sie hat ihrem Bruder einen langen Brief geschrieben.",
    "Kannst du mir bitte das Salz geben?",
]
HYPOTHESES_DE = [
    "Der Mann rennt schnell über die Straße.",
    "Die Kinder spielen in dem Garten mit einem Ball.",
    "Gestern habe ich ein Buch über Berlins Geschichte gelesen.",
    "wir treffen uns morgen um acht Uhr am Bahnhof",
    "Das Wetter ist heute nicht schön.",
    "",
    "Kannst du mir bitte das Salz geben ?",
]
# English, with one hypothesis longer than its reference (no brevity penalty from it alone).
REFERENCES_EN = [
    "The committee approved the new budget on Tuesday.",
    "A small dog was sleeping under the kitchen table.",
    "She said that the train would arrive late.",
    "Prices rose by three percent last year.",
    "He doesn't know where his keys are.",
]
HYPOTHESES_EN = [
    "The committee has approved the new budget on Tuesday evening.",
    "A little dog slept under the table in the kitchen.",
    "She said the train would be late.",
    "Prices rose three per cent last year.",
    "He does not know where are his keys.",
]


@pytest.mark.parametrize("hypotheses, references", [
    (HYPOTHESES_DE, REFERENCES_DE), (HYPOTHESES_EN, REFERENCES_EN),
    (HYPOTHESES_DE + HYPOTHESES_EN, REFERENCES_DE + REFERENCES_EN),
], ids=["de", "en", "both"])
def test_bleu_and_chrf_equal_sacrebleu_on_imperfect_output(hypotheses, references):
    scores = translation_scores(hypotheses, references)
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert 5.0 < bleu < 95.0 and 5.0 < chrf < 95.0  # imperfect, yet related: not degenerate
    assert scores["bleu"] == pytest.approx(bleu, abs=1e-6)
    assert scores["chrf"] == pytest.approx(chrf, abs=1e-6)
    assert scores["n"] == len(hypotheses)


def test_bleu_by_hand_sums_ngram_counts_over_the_corpus():
    # "a b c d e" for "a b c d f": 1- to 4-gram matches 4/5, 3/4, 2/3, 1/2; same length.
    # "x y z w" for "x y z w v": all n-grams match (4/4 .. 1/1), one word short.
    hypotheses, references = ["a b c d e", "x y z w"], ["a b c d f", "x y z w v"]
    first = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert translation_scores(hypotheses[:1], references[:1])["bleu"] == pytest.approx(
        100 * first, abs=1e-9)
    # Corpus: summed counts 8/9, 6/7, 4/5, 2/3; 9 words against 10: brevity e^(1 - 10/9).
    corpus = math.exp(1 - 10 / 9) * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert translation_scores(hypotheses, references)["bleu"] == pytest.approx(
        100 * corpus, abs=1e-9)
    second = math.exp(1 - 5 / 4)
    assert abs(100 * corpus - 50 * (first + second)) > 0.5  # not the mean of sentence scores


def read_gold_and_predicted(path: Path) -> list[tuple[list[str], list[str]]]:
    """``word gold predicted`` lines, a blank line after each sentence (conlleval's input)."""
    sentences, gold, predicted = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            sentences.append((gold, predicted))
            gold, predicted = [], []
            continue
        _, gold_tag, predicted_tag = line.split()
        gold.append(gold_tag)
        predicted.append(predicted_tag)
    return sentences


# tests/data/spans-iob{1,2}.conll: the first 40 sentences of corpora/ner/dev.txt (IOB1, and
# converted to IOB2) with systematic prediction errors, by global token index k: an entity
# token becomes O when k % 7 == 0, changes type when k % 11 == 0; an O token becomes I-MISC
# when k % 13 == 0; an I- token becomes B- when k % 17 == 0. Many predictions are ill-formed
# (I- after O, a type change inside an entity), which conlleval reads as new entities.
#
# Expected figures: seqeval 1.2.2 in its default (conlleval-compatible) mode, computed once:
#   precision_score / recall_score / f1_score / accuracy_score / classification_report and
#   len(get_entities(...)) on the same tag lists. The span figures are the same for both files.
CONLLEVAL_COUNTS = {"n_gold": 66, "n_pred": 96, "n_correct": 34}
CONLLEVAL_OVERALL = {"precision": 35.416666666667, "recall": 51.515151515152,
                     "f1": 41.975308641975}
CONLLEVAL_ACCURACY = {"IOB1": 84.615384615385, "IOB2": 85.676392572944}
CONLLEVAL_PER_TYPE = {
    "LOC": (66.666666666667, 57.142857142857, 61.538461538462, 28),
    "MISC": (12.121212121212, 80.000000000000, 21.052631578947, 5),
    "ORG": (22.727272727273, 29.411764705882, 25.641025641026, 17),
    "PER": (52.941176470588, 56.250000000000, 54.545454545455, 16),
}


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2"])
def test_span_f1_equals_conlleval_on_a_realistic_file(scheme):
    sentences = read_gold_and_predicted(DATA / f"spans-{scheme.lower()}.conll")
    assert len(sentences) == 40
    metric = SpanF1()
    for gold, predicted in sentences:
        metric.add(gold, predicted, scheme)
    result = metric.result()
    assert {key: result[key] for key in CONLLEVAL_COUNTS} == CONLLEVAL_COUNTS
    for key, expected in CONLLEVAL_OVERALL.items():
        assert result[key] == pytest.approx(expected, abs=1e-9), key
    assert result["accuracy"] == pytest.approx(CONLLEVAL_ACCURACY[scheme], abs=1e-9)
    assert sorted(result["per_type"]) == sorted(CONLLEVAL_PER_TYPE)
    for entity_type, (precision, recall, f1, support) in CONLLEVAL_PER_TYPE.items():
        got = result["per_type"][entity_type]
        assert got["precision"] == pytest.approx(precision, abs=1e-9), entity_type
        assert got["recall"] == pytest.approx(recall, abs=1e-9), entity_type
        assert got["f1"] == pytest.approx(f1, abs=1e-9), entity_type
        assert got["support"] == support, entity_type
