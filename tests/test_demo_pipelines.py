"""The shipped demo pipelines, as README runs them: train on the bundled corpora, then serve.

(pipelines/ner.yaml has its own test in test_ner.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nlpseq.cli import main

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args, stdin: str | None = None):
    result = CliRunner().invoke(main, [str(a) for a in args], input=stdin)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture(autouse=True)
def at_the_repository(monkeypatch):
    monkeypatch.chdir(ROOT)  # pipelines name their corpora relative to the repository


def test_sentiment_demo_as_shipped(tmp_path):
    run = tmp_path / "sentiment"
    trained = invoke("train", "pipelines/sentiment.yaml", "--out", run, "--quiet")
    assert json.loads(trained.stdout)["accuracy"] >= 95.0  # `make demo` prints this
    scores = json.loads(invoke("evaluate", run, "corpora/sentiment/dev.tsv", "--json").stdout)
    assert scores["n"] == 200 and scores["accuracy"] >= 95.0
    lines = invoke("predict", run, "--json", stdin="a warm and wonderful film\n\nnot bad\n")
    predictions = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(predictions) == 3 and all(p["label"] in {"0", "1"} for p in predictions)


def test_chargen_demo_shortened(tmp_path):
    run = tmp_path / "chargen"
    invoke("train", "pipelines/chargen.yaml", "--out", run, "--quiet", "--set", "train.epochs=2")
    text = invoke("generate", run, "--prompt", "The ", "--length", 40, "--seed", 1).stdout
    assert text.startswith("The ") and len(text.rstrip("\n")) == 44
    scores = json.loads(invoke("evaluate", run, "corpora/chargen/lanterns.txt", "--json").stdout)
    assert scores["bpc"] > 0


def test_translate_demo_shortened(tmp_path):
    run = tmp_path / "translate"
    invoke("train", "pipelines/translate.yaml", "--out", run, "--quiet",
           "--set", "train.epochs=2")
    out = invoke("translate", run, "--beam", 2, stdin="a man is eating .\n\n").stdout
    assert len(out.split("\n")) == 3  # one line out per line in, the empty one included
    scores = json.loads(invoke("evaluate", run, "corpora/translate/dev.en",
                               "corpora/translate/dev.de", "--json").stdout)
    assert 0 <= scores["bleu"] <= 100
