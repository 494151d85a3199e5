"""Pretrained vectors: alignment to a vocabulary, coverage, cache, bad files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from nlpseq import embeddings
from nlpseq.embeddings import (
    Coverage,
    align,
    extend_vocabulary,
    initial_vectors,
    load_fixed_vectors,
    load_vectors,
    pretrained_matrix,
    save_fixed_vectors,
)
from nlpseq.errors import NlpseqError

VOCAB = ["<pad>", "<unk>", "<bos>", "<eos>", "the", "Film", "THE", "good", "1234", "paris",
         "missing"]


def test_alignment_exact_lowercase_digits_and_coverage(glove_file):
    vectors = load_vectors(str(glove_file), "glove")
    matrix, coverage = align(VOCAB, vectors, 3, seed=0, skip=4)
    assert matrix.shape == (len(VOCAB), 3) and matrix.dtype == np.float32
    assert (matrix[:4] == 0).all()  # special tokens are skipped
    np.testing.assert_allclose(matrix[4], [0.1, 0.2, 0.3])  # the: exact
    np.testing.assert_allclose(matrix[5], [0.4, 0.5, 0.6])  # Film -> film
    np.testing.assert_allclose(matrix[6], [0.1, 0.2, 0.3])  # THE -> the
    np.testing.assert_allclose(matrix[7], [-0.1, -0.2, -0.3])  # good: exact
    np.testing.assert_allclose(matrix[8], [0.7, 0.8, 0.9])  # 1234 -> 0000
    # "paris" (the file has "Paris") and "missing" get a random init, different per word.
    assert coverage == Coverage(exact=2, lowercase=2, digits=1, missing=2)
    assert coverage.found == 5
    assert "5/7" in str(coverage)
    assert np.abs(matrix[9:]).sum() > 0 and not np.allclose(matrix[9], matrix[10])
    again, _ = align(VOCAB, vectors, 3, seed=0, skip=4)
    np.testing.assert_array_equal(matrix, again)  # the random rows follow the seed


def test_dimension_must_match_the_model(glove_file):
    vectors = load_vectors(str(glove_file), "glove")
    with pytest.raises(NlpseqError, match="dimension 3.*embedding_dim is 4"):
        align(VOCAB, vectors, 4)
    with pytest.raises(NlpseqError, match=rf"^{glove_file}: embeddings have dimension 3"):
        pretrained_matrix(str(glove_file), "glove", VOCAB, 4)


def test_cache_hit_the_second_time(tmp_path, glove_file, monkeypatch, capsys):
    cache = tmp_path / "cache"
    first, coverage = pretrained_matrix(str(glove_file), "glove", VOCAB, 3, cache_dir=str(cache),
                                        skip=4)
    assert "cached" not in capsys.readouterr().err
    assert len(list(cache.glob("*.safetensors"))) == 1

    def no_gensim(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(embeddings, "load_vectors", no_gensim)
    second, coverage2 = pretrained_matrix(str(glove_file), "glove", VOCAB, 3,
                                          cache_dir=str(cache), skip=4)
    assert "(cached)" in capsys.readouterr().err
    assert np.array_equal(first.numpy(), second.numpy())
    assert coverage2 == coverage
    # A different vocabulary or a changed file is a different cache entry.
    with pytest.raises(AssertionError, match="cache"):
        pretrained_matrix(str(glove_file), "glove", [*VOCAB, "new"], 3, cache_dir=str(cache),
                          skip=4)
    glove_file.write_text(glove_file.read_text() + "new 1 2 3\n")
    with pytest.raises(AssertionError, match="cache"):
        pretrained_matrix(str(glove_file), "glove", VOCAB, 3, cache_dir=str(cache), skip=4)


def test_no_cache_dir_loads_every_time(glove_file):
    matrix, coverage = pretrained_matrix(str(glove_file), "glove", VOCAB, 3, skip=4)
    assert matrix.shape == (len(VOCAB), 3) and coverage.missing == 2


def test_rows_of_different_dimension_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("the 0.1 0.2 0.3\nfilm 0.4 0.5 0.6\nbad 0.1 0.2\ngood 1 2 3\n")
    with pytest.raises(NlpseqError) as err:
        load_vectors(str(path), "glove")
    assert (err.value.path, err.value.line) == (str(path), 3)
    assert "2 values" in str(err.value) and "3" in str(err.value)
    longer = tmp_path / "longer.txt"
    longer.write_text("the 0.1 0.2 0.3\nfilm 0.4 0.5 0.6 0.7\n")
    with pytest.raises(NlpseqError, match=r"longer\.txt:2: "):
        load_vectors(str(longer), "glove")


def test_a_value_that_is_not_a_number_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("the 0.1 0.2 0.3\nfilm 0.4 zero 0.6\n")
    with pytest.raises(NlpseqError, match=rf"^{path}:2: bad embeddings row: 'zero' is not a"):
        load_vectors(str(path), "glove")


def test_word2vec_header_is_not_a_row(tmp_path):
    path = tmp_path / "bad.w2v"
    path.write_text("4 3\nthe 0.1 0.2 0.3\nfilm 0.4 0.5 0.6\nbad 0.1 0.2\ngood 1 2 3\n")
    with pytest.raises(NlpseqError) as err:
        load_vectors(str(path), "word2vec")
    assert (err.value.path, err.value.line) == (str(path), 4)


def test_gzip_and_word2vec_formats(tmp_path, glove_file):
    gz = tmp_path / "vectors.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as handle:
        handle.write(glove_file.read_text())
    glove = load_vectors(str(gz), "glove")
    assert glove.vector_size == 3 and "Paris" in glove.key_to_index
    for fmt, binary in (("word2vec", False), ("word2vec-binary", True)):
        out = tmp_path / f"vectors.{fmt}"
        glove.save_word2vec_format(str(out), binary=binary)
        loaded = load_vectors(str(out), fmt)
        np.testing.assert_allclose(loaded["film"], glove["film"], rtol=1e-6)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(NlpseqError, match="not found"):
        load_vectors(str(tmp_path / "none.txt"), "glove")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 0.1 0.2\n".encode("latin-1"))
    with pytest.raises(NlpseqError, match="UTF-8") as err:
        load_vectors(str(bad), "glove")
    assert err.value.path == str(bad)


def test_fasttext_bin_gives_unseen_words_their_subword_vectors(tmp_path):
    from gensim.models import FastText
    from gensim.models.fasttext import save_facebook_model

    corpus = [["the", "film", "was", "wonderful"], ["the", "plot", "was", "dull"]] * 5
    model = FastText(vector_size=4, window=2, min_count=1, min_n=2, max_n=3, bucket=200,
                     seed=1, workers=1)
    model.build_vocab(corpus)
    model.train(corpus, total_examples=len(corpus), epochs=1)
    path = tmp_path / "tiny.bin"
    save_facebook_model(model, str(path))
    words = ["<pad>", "<unk>", "<bos>", "<eos>", "film", "films", "wonderfully"]
    matrix, coverage = pretrained_matrix(str(path), "fasttext", words, 4, skip=4)
    assert coverage.missing == 0 and coverage.exact == 3  # unseen words built from n-grams
    loaded = load_vectors(str(path), "fasttext")
    for row, word in enumerate(words[4:], 4):
        assert np.allclose(matrix[row].numpy(), loaded[word], atol=1e-6)
    assert not np.allclose(matrix[5].numpy(), matrix[6].numpy())
    assert np.all(matrix[:4].numpy() == 0)


def _tokenizer(lowercase: bool = False):
    from nlpseq.config import TokenizerConfig
    from nlpseq.tokenize import TextTokenizer

    return TextTokenizer.train(["the Film good 1234 xyz"],
                               TokenizerConfig(kind="word", lowercase=lowercase))


@pytest.mark.parametrize("words, added", [(-1, ["film", "Paris", "0000"]), (2, ["film"]),
                                          (0, [])])
def test_fixed_rows_for_words_outside_the_training_vocabulary(tmp_path, glove_file, words,
                                                              added):
    from nlpseq.config import EmbeddingsConfig

    config = EmbeddingsConfig(path=str(glove_file), format="glove",
                              cache_dir=str(tmp_path / "cache"))
    trained_words = _tokenizer().vocabulary()
    tokenizer, trained_size = extend_vocabulary(_tokenizer(), config, words)
    assert trained_size == len(trained_words) == 9
    assert tokenizer.vocabulary() == trained_words + added  # trained ids unchanged
    trained, fixed = initial_vectors(config, tokenizer.vocabulary(), trained_size, 3, seed=0)
    assert trained.shape == (9, 3)
    rows = {word: trained[i].tolist() for i, word in enumerate(trained_words)}
    assert rows["the"] == pytest.approx([0.1, 0.2, 0.3])  # exact
    assert rows["Film"] == pytest.approx([0.4, 0.5, 0.6])  # lowercase
    assert rows["1234"] == pytest.approx([0.7, 0.8, 0.9])  # digits
    assert rows["good"] == pytest.approx([-0.1, -0.2, -0.3])
    assert rows["<pad>"] == [0, 0, 0]
    if not added:
        assert fixed is None
        return
    assert fixed.shape == (len(added), 3)
    vectors = load_vectors(str(glove_file), "glove")
    for row, word in enumerate(added):
        assert fixed[row].tolist() == pytest.approx(vectors[word].tolist())
    # an unseen word finds its fixed row through the tokenizer: id trained_size + row
    assert tokenizer.encode("Film film xyz") == [trained_words.index("Film"), trained_size,
                                                 trained_words.index("xyz")]
    save_fixed_vectors(tmp_path, fixed)
    loaded, size = load_fixed_vectors(tmp_path, tokenizer.vocab_size)
    assert torch.equal(loaded, fixed) and size == trained_size


def test_no_vectors_file_no_fixed_rows(tmp_path):
    from nlpseq.config import EmbeddingsConfig

    tokenizer, trained_size = extend_vocabulary(_tokenizer(), EmbeddingsConfig(), -1)
    assert trained_size == tokenizer.vocab_size
    assert initial_vectors(EmbeddingsConfig(), tokenizer.vocabulary(), trained_size, 3, 0) == \
        (None, None)
    assert load_fixed_vectors(tmp_path, 7) == (None, 7)
    save_fixed_vectors(tmp_path, None)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "vectors.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(NlpseqError, match="cannot read the fixed pretrained vectors"):
        load_fixed_vectors(tmp_path, 7)


def test_default_cache_folder_of_a_config_built_in_python(tmp_path, glove_file, monkeypatch):
    from nlpseq.config import EmbeddingsConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NLPSEQ_CACHE", str(tmp_path / "cache"))
    config = EmbeddingsConfig(path=str(glove_file), format="glove")
    assert config.cache_dir.startswith("${NLPSEQ_CACHE")  # unexpanded, as written
    extend_vocabulary(_tokenizer(), config, -1)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("$")] == []
    assert any(p.name.startswith("words-") for p in (tmp_path / "cache").iterdir())


def _word2vec_config(tmp_path, **changes):
    from nlpseq.config import EmbeddingsConfig

    values = dict(word2vec_dim=8, word2vec_epochs=20, word2vec_min_count=2,
                  cache_dir=str(tmp_path / "cache"))
    return EmbeddingsConfig(**{**values, **changes})


def _contexts(seed: int = 0, sentences: int = 3000) -> list[list[int]]:
    """Ids 4 and 5 always appear between the same neighbours (8-11), id 6 between others
    (12-15); id 7 once; ids 0-3 (specials) here and there."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(sentences):
        word = int(rng.choice([4, 5, 6]))
        side = [8, 9, 10, 11] if word in (4, 5) else [12, 13, 14, 15]
        out.append([*rng.choice(side, 2).tolist(), word, *rng.choice(side, 2).tolist(), 1])
    out.append([7, 8, 9])
    return out


def test_word2vec_vectors_reflect_shared_contexts(tmp_path):
    config = _word2vec_config(tmp_path)
    matrix = embeddings.word2vec_matrix(_contexts, 16, config, seed=3).numpy()
    assert matrix.shape == (16, 8)
    assert not matrix[:4].any()  # specials: no vector
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-9)
    assert unit[4] @ unit[5] > 0.9
    assert unit[4] @ unit[5] > unit[4] @ unit[6] + 0.5
    assert not matrix[7].any()  # seen once, below min_count: no vector


def test_word2vec_is_reproducible_and_cached(tmp_path, monkeypatch, capsys):
    config = _word2vec_config(tmp_path)
    first = embeddings.word2vec_matrix(_contexts, 16, config, seed=3)
    uncached = embeddings.word2vec_matrix(_contexts, 16, _word2vec_config(tmp_path, cache_dir=""),
                                          seed=3)
    assert torch.equal(first, uncached)  # one worker: the same vectors every time
    assert "words from" in capsys.readouterr().err
    monkeypatch.setattr(embeddings, "_train_word2vec", lambda *a: pytest.fail("retrained"))
    assert torch.equal(embeddings.word2vec_matrix(_contexts, 16, config, seed=3), first)
    assert "(cached)" in capsys.readouterr().err
    with pytest.raises(pytest.fail.Exception, match="retrained"):  # other texts: trained
        embeddings.word2vec_matrix(lambda: _contexts(seed=1), 16, config, seed=3)
    with pytest.raises(pytest.fail.Exception, match="retrained"):  # other settings: trained
        embeddings.word2vec_matrix(_contexts, 16, _word2vec_config(tmp_path, word2vec_dim=4),
                                   seed=3)


def test_word2vec_follows_the_pretrained_vectors_in_each_row(tmp_path, glove_file):
    tokenizer, trained_size = extend_vocabulary(
        _tokenizer(), _word2vec_config(tmp_path, path=str(glove_file)), -1)
    vocabulary = tokenizer.vocabulary()
    ids = tokenizer.encode("the Film good film Paris xyz")

    def texts():
        return [ids] * 50

    config = _word2vec_config(tmp_path, path=str(glove_file), word2vec_dim=2)
    trained, fixed = initial_vectors(config, vocabulary, trained_size, 5, 0, texts=texts)
    glove_only = initial_vectors(_word2vec_config(tmp_path, path=str(glove_file),
                                                  word2vec_dim=0),
                                 vocabulary, trained_size, 3, 0)
    own = embeddings.word2vec_matrix(texts, len(vocabulary), config, seed=0)
    assert trained.shape == (trained_size, 5) and fixed.shape == (3, 5)
    assert torch.equal(trained[:, :3], glove_only[0]) and torch.equal(fixed[:, :3], glove_only[1])
    assert torch.equal(torch.cat([trained, fixed])[:, 3:], own)
    alone, _ = initial_vectors(_word2vec_config(tmp_path, word2vec_dim=2), vocabulary,
                               len(vocabulary), 2, 0, texts=texts)
    assert torch.equal(alone, own)
    with pytest.raises(NlpseqError, match="no room for the vectors of embeddings.path"):
        initial_vectors(_word2vec_config(tmp_path, path=str(glove_file), word2vec_dim=5),
                        vocabulary, trained_size, 5, 0, texts=texts)
    with pytest.raises(NlpseqError, match="without embeddings.path they must agree"):
        initial_vectors(_word2vec_config(tmp_path, word2vec_dim=2), vocabulary, trained_size,
                        3, 0, texts=texts)
    for texts in ([[0, 1, 2]], [[5, 6, 7]], []):  # specials only; each word once; nothing
        with pytest.raises(NlpseqError, match=r"no word of the texts occurs .*\(2\) times"):
            embeddings.word2vec_matrix(lambda texts=texts: texts, 16,
                                       _word2vec_config(tmp_path), seed=0)
