"""The shipped demo pipelines, as README runs them: train on the bundled corpora, then serve.

(pipelines/ner.yaml has its own test in test_ner.py.)
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import ROOT, invoke


@pytest.fixture(autouse=True)
def at_the_repository(monkeypatch):
    monkeypatch.chdir(ROOT)  # pipelines name their corpora relative to the repository


def scores(*args: object) -> dict:
    """``nlpseq evaluate ARGS --json`` as a dict."""
    return json.loads(invoke("evaluate", *args, "--json", check=True).stdout)


def test_sentiment_demo_as_shipped(tmp_path):
    run = tmp_path / "sentiment"
    trained = invoke("train", "pipelines/sentiment.yaml", "--out", run, "--quiet", check=True)
    assert json.loads(trained.stdout)["accuracy"] >= 95.0  # `make demo` prints this
    dev = scores(run, "corpora/sentiment/dev.tsv")
    assert dev["n"] == 200 and dev["accuracy"] >= 95.0
    lines = invoke("predict", run, "--json", input="a warm and wonderful film\n\nnot bad\n",
                   check=True)
    predictions = [json.loads(line) for line in lines.stdout.splitlines()]
    # data.label_names: the shipped pipeline prints names, not the file's 0/1
    assert [p["label"] for p in predictions][::2] == ["positive", "positive"]
    assert set(predictions[1]["probabilities"]) == {"negative", "positive"}


def test_chargen_demo_shortened(tmp_path):
    run = tmp_path / "chargen"
    invoke("train", "pipelines/chargen.yaml", "--out", run, "--quiet", "--set", "train.epochs=2",
           check=True)
    text = invoke("generate", run, "--prompt", "The ", "--length", 40, "--seed", 1,
                  check=True).stdout
    assert text.startswith("The ") and len(text.rstrip("\n")) == 44
    dev = scores(run, "corpora/chargen/lanterns.txt")
    # two epochs: far from uniform over the characters, and the three figures agree
    assert 0 < dev["bpc"] < 4
    assert dev["bpc"] == pytest.approx(dev["loss"] / math.log(2), rel=1e-9)
    assert dev["perplexity"] == pytest.approx(math.exp(dev["loss"]), rel=1e-9)


def test_translate_demo_shortened(tmp_path):
    import sacrebleu

    run = tmp_path / "translate"
    invoke("train", "pipelines/translate.yaml", "--out", run, "--quiet",
           "--set", "train.epochs=2", check=True)
    out = invoke("translate", run, "--beam", 2, input="a man is eating .\n\n", check=True).stdout
    assert len(out.split("\n")) == 3  # one line out per line in, the empty one included
    dev = scores(run, "corpora/translate/dev.en", "corpora/translate/dev.de")
    # evaluate's BLEU is sacreBLEU's on what `translate` writes for the same sources
    hypotheses = invoke("translate", run, "--input", "corpora/translate/dev.en",
                        check=True).stdout.splitlines()
    references = (ROOT / "corpora/translate/dev.de").read_text(encoding="utf-8").splitlines()
    assert dev["n"] == len(hypotheses) == len(references) == 60
    assert dev["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score,
                                        abs=1e-9)
