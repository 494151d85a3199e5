"""Long raw documents (IMDB-style): chunked encoding, hashed n-gram scores, held-out dev,
HTML and punctuation handling, token-capped inference batches."""

from __future__ import annotations

import resource

import pytest
import torch
from helpers import sentences, write_pipeline, write_tsv

import nlpseq
from nlpseq.batching import bucket_batches
from nlpseq.config import TokenizerConfig, load_config
from nlpseq.errors import NlpseqError
from nlpseq.models.classifier import ClassifierConfig, TextClassifier
from nlpseq.tokenize import TextTokenizer


def _pair(**settings) -> tuple[TextClassifier, TextClassifier]:
    """A chunking classifier and the same weights reading whole texts."""
    torch.manual_seed(0)
    chunked = TextClassifier(ClassifierConfig(hidden_size=6, **settings), 40, 3).eval()
    whole = TextClassifier(ClassifierConfig(hidden_size=6, **{**settings, "chunk_length": 0}),
                           40, 3).eval()
    whole.load_state_dict(chunked.state_dict())
    return chunked, whole


@pytest.mark.parametrize("pooling", ["max", "mean", "max-mean", "attention"])
def test_chunks_pool_like_texts_cut_by_hand(pooling):
    """A text read in chunks of 4 pools the states the encoder gives each chunk alone."""
    chunked, whole = _pair(pooling=pooling, chunk_length=4)
    ids = torch.randint(4, 40, (3, 11))
    lengths = torch.tensor([11, 5, 2])
    for row, length in enumerate(lengths.tolist()):
        ids[row, length:] = 0
    got = chunked.logits(ids, lengths)
    for row, length in enumerate(lengths.tolist()):
        states = torch.cat([
            whole.encoder(ids[row : row + 1, start : min(start + 4, length)],
                          torch.tensor([min(4, length - start)]))[0][0]
            for start in range(0, length, 4)])  # (length, D)
        if pooling == "attention":
            weights = whole.attention(states).softmax(dim=0)
            pooled = (weights * states).sum(dim=0)
        else:
            pooled = {"max": states.amax(0), "mean": states.mean(0),
                      "max-mean": torch.cat([states.amax(0), states.mean(0)])}[pooling]
        assert torch.allclose(got[row], whole.output(pooled), atol=1e-5)
    # texts no longer than a chunk read exactly as without chunking
    short, short_lengths = ids[1:, :4], lengths[1:].clamp(max=4)
    torch.testing.assert_close(chunked.logits(short, short_lengths),
                               whole.logits(short, short_lengths), atol=1e-6, rtol=0)


def test_chunks_need_a_pooling_over_tokens():
    with pytest.raises(ValueError, match="chunk_length"):
        TextClassifier(ClassifierConfig(pooling="last", chunk_length=8), 10, 2)


def test_ngram_scores_are_the_hashed_rows_summed_over_the_root_of_their_count():
    torch.manual_seed(0)
    model = TextClassifier(ClassifierConfig(hidden_size=4, ngram_buckets=97, ngram_order=3),
                           30, 2).eval()
    assert model.ngrams.weight.abs().sum() == 0  # unseen n-grams add nothing
    torch.nn.init.normal_(model.ngrams.weight)
    ids, lengths = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]), torch.tensor([4, 2])
    for row, words in enumerate([[5, 6, 7, 8], [9, 10]]):
        grams = [words[i : i + n] for n in (1, 2, 3) for i in range(len(words) - n + 1)]
        total = torch.zeros(2)
        for gram in grams:
            value = gram[0]
            for word in gram[1:]:
                value = (value * 1_000_003 + word) % 2_147_483_647
            total += model.ngrams.weight[value % 97]
        expected = total / len(grams) ** 0.5
        assert torch.allclose(model._ngram_scores(ids, lengths)[row], expected, atol=1e-6)
    # the bag is added to the recurrent part's scores
    model.ngrams.weight.data.zero_()
    plain = model.logits(ids, lengths)
    torch.nn.init.normal_(model.ngrams.weight)
    assert torch.allclose(model.logits(ids, lengths) - plain, model._ngram_scores(ids, lengths))


def test_html_and_punctuation_on_raw_text():
    text = "Great movie.<br /><br />It's <i>fun</i>, a <3 b!"
    config = TokenizerConfig(lowercase=True, strip_html=True, split_punctuation=True)
    tokenizer = TextTokenizer.train([text], config)
    assert tokenizer.tokens(text) == ["great", "movie", ".", "it", "'", "s", "fun", ",", "a",
                                      "<", "3", "b", "!"]
    assert tokenizer.encode_batch([text]) == [tokenizer.encode(text)]
    plain = TextTokenizer.train([text], TokenizerConfig())
    assert "movie.<br" in plain.tokens(text)[1]


def test_inference_batches_are_capped_in_tokens():
    lengths = [1000, 10, 600, 20, 30, 5]
    batches = bucket_batches(lengths, 4, shuffle=False, max_tokens=1200)
    assert batches == [[0], [2, 4], [3, 1, 5]]
    assert all(len(b) * max(lengths[i] for i in b) <= 1200 for b in batches)
    assert bucket_batches(lengths, 4, shuffle=False) == [[0, 2, 4, 3], [1, 5]]
    assert bucket_batches([5000], 4, shuffle=False, max_tokens=100) == [[0]]


def _labelled(count: int) -> list[tuple[str, str]]:
    return sentences(1, count)


def test_dev_size_holds_out_a_fixed_part_of_train(tmp_path):
    from nlpseq.trainer import train

    data = {"train": write_tsv(tmp_path / "train.tsv", _labelled(40))}
    pipeline = write_pipeline(tmp_path, "sentiment", data, {
        "data.dev_size": 10, "train.epochs": 1, "train.seed": 3})
    logs: list[str] = []
    result = train(load_config(pipeline), tmp_path / "run", log=logs.append, progress=False)
    assert result.metrics["dev"]["n"] == 10
    assert len(result.task.train_ids) == 30
    assert any("10 examples" in m and "data.dev_size" in m for m in logs)
    # another seed holds out the same examples
    again = train(load_config(pipeline, ["train.seed=4"]), tmp_path / "other",
                  log=lambda _m: None, progress=False)
    assert again.task.dev_ids == result.task.dev_ids
    store = again.task.train_ids
    rows = [tuple(r.tolist()) for r in torch.split(store.flat, store.lengths.tolist())]
    everything = again.task.tokenizer.encode_batch([t for _, t in _labelled(40)])
    assert sorted(rows + list(map(tuple, again.task.dev_ids))) == sorted(map(tuple, everything))
    too_many = write_pipeline(tmp_path, "sentiment", data, {"data.dev_size": 40}, name="x.yaml")
    with pytest.raises(NlpseqError, match="leaves no training examples"):
        train(load_config(too_many), tmp_path / "bad", log=lambda _m: None, progress=False)


def test_a_5000_word_review_is_classified_in_bounded_memory(tmp_path):
    """Truncation bounds what the model reads, chunks bound the sequential steps, and the
    review's answer equals that of its first max_length words."""
    from nlpseq.trainer import train

    data = {"train": write_tsv(tmp_path / "train.tsv", _labelled(24)),
            "dev": write_tsv(tmp_path / "dev.tsv", sentences(2, 8))}
    pipeline = write_pipeline(tmp_path, "sentiment", data, {
        "train.epochs": 1, "tokenizer.max_length": 400, "model.chunk_length": 50,
        "model.pooling": "max-mean", "model.ngram_buckets": 1000,
        "tokenizer.strip_html": True, "tokenizer.split_punctuation": True})
    train(load_config(pipeline), tmp_path / "run", log=lambda _m: None, progress=False)
    predictor = nlpseq.load(tmp_path / "run")
    words = " ".join(text for _, text in _labelled(24)).split()
    review = " ".join(words[i % len(words)] for i in range(5000)) + " <br />" * 10
    seen: list[tuple[int, ...]] = []
    hook = predictor.model.encoder.register_forward_hook(
        lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    long_answer = predictor.predict([review])[0]
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    hook.remove()
    assert seen == [(8, 50)]  # 400 tokens as 8 chunks of 50, one batch
    short_answer = predictor.predict([" ".join(review.split()[:400])])[0]
    assert long_answer["label"] == short_answer["label"]
    for label, p in short_answer["probabilities"].items():
        assert long_answer["probabilities"][label] == pytest.approx(p, abs=1e-6)
    assert grown_kib < 200_000  # a tiny model reading 400 tokens: far below 200 MB
