"""Sentiment end to end on a tiny corpus: overfit, save, reload, predict, evaluate."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import PROBES, sentences, write_pipeline, write_tsv
from safetensors.torch import load_file

import nlpseq
from nlpseq import checkpoint as ckpt
from nlpseq.config import load_config
from nlpseq.errors import NlpseqError


def test_overfits_and_reloads_with_identical_predictions(trained_run):
    predictor = nlpseq.load(trained_run.run_dir)
    assert predictor.model is not None and not predictor.model.training
    again = predictor.predict(PROBES)
    assert [p["label"] for p in again] == [p["label"] for p in trained_run.predictions]
    for new, old in zip(again, trained_run.predictions):
        assert set(new["probabilities"]) == {"neg", "pos"}
        assert sum(new["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        for label, p in old["probabilities"].items():
            assert new["probabilities"][label] == pytest.approx(p, abs=1e-6)
    assert [p["label"] for p in again[:3]] == ["pos", "neg", "pos"]
    # The model learnt the training set.
    texts = [text for _, text in sentences(1, 24)]
    gold = [label for label, _ in sentences(1, 24)]
    assert [p["label"] for p in predictor.predict(texts)] == gold
    with pytest.raises(TypeError, match="list of texts"):
        predictor.predict("a single string")


def test_prediction_does_not_depend_on_batching(trained_run):
    predictor = nlpseq.load(trained_run.run_dir)
    together = predictor.predict(PROBES)
    for text, expected in zip(PROBES, together):
        alone = predictor.predict([text])[0]
        for label, p in expected["probabilities"].items():
            assert alone["probabilities"][label] == pytest.approx(p, abs=1e-5)


def test_run_directory_is_complete(trained_run):
    run = trained_run.run_dir
    names = {p.name for p in run.iterdir() if not p.name.startswith(".")}
    assert names == {ckpt.CONFIG, ckpt.POINTER, ckpt.CHECKPOINTS, "tokenizer.json",
                     "labels.json"}
    folder = ckpt.RunDir(run).current()
    assert [p.name for p in (run / ckpt.CHECKPOINTS).iterdir()] == [folder.name]
    assert {p.name for p in folder.iterdir()} == {
        ckpt.WEIGHTS, ckpt.METRICS, ckpt.HISTORY, ckpt.LAST_WEIGHTS, ckpt.OPTIMIZER,
        ckpt.TRAINER_STATE, ckpt.TRAINED_WITH}
    # No temporary files left behind, nothing pickled: every file parses as what it claims.
    config = load_config(run / ckpt.CONFIG)
    assert config.task == "sentiment" and config.model.hidden_size == 8
    weights = load_file(str(folder / ckpt.WEIGHTS))
    assert "encoder.embedding.weight" in weights
    assert all(torch.isfinite(t).all() for t in weights.values())
    load_file(str(folder / ckpt.LAST_WEIGHTS))
    load_file(str(folder / ckpt.OPTIMIZER))
    metrics = json.loads((folder / ckpt.METRICS).read_text())
    assert metrics["selection_metric"] == "loss" and metrics["dev"]["n"] == 8
    history = ckpt.read_jsonl(folder / ckpt.HISTORY)
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert all({"train_loss", "accuracy", "macro_f1", "lr"} <= set(h) for h in history)
    state = json.loads((folder / ckpt.TRAINER_STATE).read_text())
    assert state["finished"] and state["epoch"] == 8
    assert json.loads((run / "labels.json").read_text()) == {"labels": ["neg", "pos"]}


def test_evaluate_files(trained_run):
    predictor = nlpseq.load(trained_run.run_dir)
    metrics = predictor.evaluate_files([str(trained_run.corpus["dev"])])
    assert metrics["n"] == 8 and metrics["accuracy"] == 100.0 and metrics["macro_f1"] == 100.0
    # the loss is the mean negative log-probability of the gold labels, by hand
    dev = sentences(2, 8)
    predicted = predictor.predict([text for _, text in dev])
    nll = [-math.log(p["probabilities"][label]) for p, (label, _) in zip(predicted, dev)]
    assert metrics["loss"] == pytest.approx(sum(nll) / 8, rel=1e-5)


def test_unknown_label_at_evaluation_names_file_and_line(trained_run, tmp_path):
    path = write_tsv(tmp_path / "eval.tsv", [("pos", "good"), ("neg", "bad"), ("meh", "ok")])
    with pytest.raises(NlpseqError, match="unknown label 'meh'") as err:
        nlpseq.load(trained_run.run_dir).evaluate_files([str(path)])
    assert (err.value.path, err.value.line) == (str(path), 4)


def test_predict_lines(trained_run):
    predictor = nlpseq.load(trained_run.run_dir)
    plain = list(predictor.predict_lines(iter(PROBES)))
    assert plain == [p["label"] for p in trained_run.predictions]
    as_json = [json.loads(line) for line in predictor.predict_lines(PROBES, as_json=True)]
    assert [r["label"] for r in as_json] == plain
    assert list(predictor.predict_lines([])) == []


def test_load_rejects_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(NlpseqError, match="not a checkpoint"):
        nlpseq.load(tmp_path)
    with pytest.raises(NlpseqError, match="not found"):
        nlpseq.load(tmp_path / "none")


@pytest.mark.parametrize("pooling, cell", [("last", "gru"), ("attention", "rnn")])
def test_other_poolings_and_cells_train(tmp_path, corpus, pooling, cell):
    from nlpseq.trainer import train

    config = load_config(write_pipeline(tmp_path, "sentiment", corpus, {
        "train.epochs": 1, "model.cell": cell, "model.pooling": pooling}))
    result = train(config, tmp_path / "run", log=lambda _m: None, progress=False)
    assert len(result.history) == 1
    # The reported accuracy is the share of dev rows the saved model predicts right.
    dev = sentences(2, 8)
    predicted = nlpseq.load(tmp_path / "run").predict([text for _, text in dev])
    right = sum(p["label"] == label for p, (label, _) in zip(predicted, dev, strict=True))
    assert result.metrics["dev"]["accuracy"] == pytest.approx(100 * right / 8)


def _glove(tmp_path, words: list[str], dim: int = 8):
    path = tmp_path / "glove.txt"
    path.write_text("".join(
        f"{w} " + " ".join(f"{(i + 1) * 0.01 + j * 0.001:.4f}" for j in range(dim)) + "\n"
        for i, w in enumerate(words)), encoding="utf-8")
    return path


@pytest.mark.parametrize("freeze", [True, False])
def test_pretrained_embeddings_frozen_or_fine_tuned(tmp_path, corpus, freeze):
    from nlpseq.embeddings import pretrained_matrix
    from nlpseq.trainer import train

    glove = _glove(tmp_path, ["the", "film", "good", "bad", "is"])
    pipeline = write_pipeline(tmp_path, "sentiment", corpus, {"train.epochs": 1})
    overrides = [f"embeddings.path={glove}", f"embeddings.freeze={str(freeze).lower()}",
                 f"embeddings.cache_dir={tmp_path / 'cache'}"]
    result = train(load_config(pipeline, overrides), tmp_path / "run", log=lambda _m: None,
                   progress=False)
    vocabulary = result.task.tokenizer.vocabulary()
    aligned, coverage = pretrained_matrix(str(glove), "glove", vocabulary, 8,
                                          cache_dir=str(tmp_path / "cache"), seed=7, skip=4)
    assert coverage.found == 5
    trained = result.task.model.encoder.embedding.weight.detach()
    assert torch.equal(trained, aligned) == freeze


def test_extended_vocabulary_gives_unseen_words_fixed_vectors(tmp_path, corpus):
    from nlpseq.trainer import train

    # "marvellous" and "dreadful" never occur in training; "film" does
    glove = _glove(tmp_path, ["film", "marvellous", "dreadful", "the"])
    pipeline = write_pipeline(tmp_path, "sentiment", corpus, {
        "train.epochs": 2, "embeddings.path": glove, "embeddings.extend_vocab": 3,
        "embeddings.cache_dir": tmp_path / "cache"})
    result = train(load_config(pipeline), tmp_path / "run", log=lambda _m: None,
                   progress=False)
    assert (tmp_path / "run" / "vectors.safetensors").is_file()
    predictor = nlpseq.load(tmp_path / "run")
    encoder = predictor.model.encoder
    trained = predictor.trained_vocab_size
    assert trained == result.task.trained_vocab_size == encoder.embedding.num_embeddings
    assert predictor.tokenizer.vocab_size == trained + 2  # the first 3 file words, less "film"
    ids = torch.tensor([predictor.tokenizer.encode("marvellous dreadful zzz")])
    assert ids[0].tolist() == [trained, trained + 1, 1]
    vectors = encoder.embed(ids)[0]
    assert vectors[0].tolist() == pytest.approx([0.02 + j * 0.001 for j in range(8)])
    assert vectors[1].tolist() == pytest.approx([0.03 + j * 0.001 for j in range(8)])
    assert not any("fixed_vectors" in key for key in predictor.model.state_dict())
    texts = ["the film is marvellous", "dreadful"]
    assert predictor.predict(texts) == result.task.predict(texts)


def test_word2vec_vectors_trained_on_the_texts_follow_the_pretrained_ones(tmp_path, corpus):
    from nlpseq.embeddings import word2vec_matrix
    from nlpseq.trainer import train

    glove = _glove(tmp_path, ["the", "film", "good", "bad", "is"])
    extra = tmp_path / "unlabelled.tsv"
    extra.write_text("text\n" + "the film is good and the plot is bad\n" * 30, encoding="utf-8")
    pipeline = write_pipeline(tmp_path, "sentiment", corpus, {
        "train.epochs": 1, "embeddings.path": glove, "embeddings.freeze": True,
        "embeddings.word2vec_dim": 4, "embeddings.word2vec_text": extra,
        "embeddings.word2vec_min_count": 1, "model.embedding_dim": 12,
        "embeddings.cache_dir": tmp_path / "cache"})
    result = train(load_config(pipeline), tmp_path / "run", log=lambda _m: None,
                   progress=False)
    task = result.task
    texts = [*task.train_ids.sequences(),
             *[task.tokenizer.encode("the film is good and the plot is bad")] * 30]
    own = word2vec_matrix(lambda: texts, task.tokenizer.vocab_size,
                          task.config.embeddings, seed=task.config.train.seed)
    weights = task.model.encoder.embedding.weight.detach()  # frozen: as initialised
    assert weights.shape == (task.tokenizer.vocab_size, 12)
    assert torch.equal(weights[:, 8:], own)
    without_extra = word2vec_matrix(task.train_ids.sequences, task.tokenizer.vocab_size,
                                    task.config.embeddings, seed=task.config.train.seed)
    assert not torch.equal(own, without_extra)  # the extra text was read
    predictor = nlpseq.load(tmp_path / "run")  # the vectors live in the run directory
    sample = ["the film is good", "bad plot"]
    assert predictor.predict(sample) == task.predict(sample)


def test_top_level_train_stays_callable(tmp_path, corpus):
    """``nlpseq.train`` is a function even after the trainer module has been imported."""
    import nlpseq.trainer  # noqa: F401

    pipeline = write_pipeline(tmp_path, "sentiment", corpus, {"train.epochs": 1})
    for name in ("a", "b"):
        result = nlpseq.train(pipeline, tmp_path / name)
        assert result.metrics["dev"]["n"] == 8
    assert callable(nlpseq.train)


def test_label_names():
    from nlpseq.tasks.sentiment import label_names

    assert label_names("0: negative, 1: positive", ["0", "1"]) == ["negative", "positive"]
    assert label_names("1: yes", ["0", "1"]) == ["0", "yes"]
    assert label_names("", ["neg", "pos"]) == ["neg", "pos"]
    with pytest.raises(NlpseqError, match="no label '2'"):
        label_names("2: other", ["0", "1"], "p.yaml")
    with pytest.raises(NlpseqError, match="is not 'label: name'"):
        label_names("0 negative", ["0", "1"], "p.yaml")


def test_evaluate_files_reads_in_parts_with_the_same_figures(trained_run, monkeypatch):
    """Scored a few rows at a time, a file gives the figures it gives read whole."""
    from nlpseq import corpora

    predictor = nlpseq.load(trained_run.run_dir)
    whole = predictor.evaluate_files([str(trained_run.corpus["dev"])])
    monkeypatch.setattr(corpora, "BLOCK", 3)
    parts = predictor.evaluate_files([str(trained_run.corpus["dev"])])
    assert parts.pop("loss") == pytest.approx(whole.pop("loss"), rel=1e-6)
    assert parts == whole
