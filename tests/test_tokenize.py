"""Tokenize stage: word / BPE / char models, specials, truncation, save and load."""

from __future__ import annotations

import pytest

from nlpseq.config import TokenizerConfig
from nlpseq.errors import NlpseqError
from nlpseq.tokenize import BOS, EOS, PAD, SPECIALS, UNK, TextTokenizer

TEXTS = ["The film of 1999 was Good", "a bad film , not good", "hello world , hello there"]


@pytest.mark.parametrize("kind", ["word", "bpe", "char"])
def test_special_tokens_have_fixed_ids(kind):
    tok = TextTokenizer.train(TEXTS, TokenizerConfig(kind=kind, max_size=200))
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    assert tok.vocabulary()[:4] == SPECIALS
    assert len(tok.vocabulary()) == tok.vocab_size


def test_word_lowercase_and_digits():
    tok = TextTokenizer.train(TEXTS, TokenizerConfig(kind="word", lowercase=True,
                                                     normalize_digits=True))
    vocab = tok.vocabulary()
    assert "the" in vocab and "The" not in vocab and "0000" in vocab and "1999" not in vocab
    assert tok.tokens("The FILM of 2024 zzz") == ["the", "film", "of", "0000", "<unk>"]
    ids = tok.encode("The FILM of 2024 zzz")
    assert ids[-1] == UNK and ids[3] == tok.token_to_id("0000")
    assert tok.decode(tok.encode("the film of 2024")) == "the film of 0000"


def test_word_case_kept_without_lowercase():
    tok = TextTokenizer.train(TEXTS, TokenizerConfig(kind="word"))
    assert tok.encode("The")[0] != UNK and tok.encode("the")[0] == UNK
    assert tok.tokens("of 1999") == ["of", "1999"]


def test_word_min_frequency_and_max_size():
    texts = ["a a a b b c"]
    assert TextTokenizer.train(texts, TokenizerConfig(min_frequency=2)).vocabulary()[4:] == [
        "a", "b"]
    assert TextTokenizer.train(texts, TokenizerConfig(max_size=1)).vocabulary()[4:] == ["a"]


@pytest.mark.parametrize("text", ["hello world", "the film , not good", "hello there world"])
def test_bpe_round_trip(text):
    tok = TextTokenizer.train(TEXTS, TokenizerConfig(kind="bpe", max_size=60))
    ids = tok.encode(text)
    assert UNK not in ids
    assert tok.decode(ids) == text


def test_bpe_splits_unseen_words_into_pieces():
    tok = TextTokenizer.train(TEXTS, TokenizerConfig(kind="bpe", max_size=60))
    assert len(tok.tokens("helloworld")) > 1
    assert tok.decode(tok.encode("helloworld")) == "helloworld"


def test_char_keeps_whitespace_and_newlines():
    tok = TextTokenizer.train(["ab c\nd", "abba"], TokenizerConfig(kind="char"))
    assert set(tok.vocabulary()[4:]) == {"a", "b", "c", "d", " ", "\n"}
    assert tok.tokens("ab z\n c") == ["a", "b", " ", "<unk>", "\n", " ", "c"]
    assert tok.encode("z") == [UNK]
    assert tok.decode(tok.encode("ab \nc  d")) == "ab \nc  d"


@pytest.mark.parametrize("kind", ["word", "bpe", "char"])
def test_save_load_gives_identical_encodings(tmp_path, kind):
    config = TokenizerConfig(kind=kind, lowercase=True, normalize_digits=True, max_length=7,
                             max_size=100)
    tok = TextTokenizer.train(TEXTS, config)
    tok.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.load(tmp_path / "tokenizer.json")
    probes = [*TEXTS, "UNSEEN words 42 and more words than seven", "", "x\ny"]
    assert loaded.encode_batch(probes) == tok.encode_batch(probes)
    assert loaded.vocabulary() == tok.vocabulary()
    assert all(len(ids) <= 7 for ids in loaded.encode_batch(probes))


def test_truncation():
    tok = TextTokenizer.train(["a b c d e f"], TokenizerConfig(max_length=3))
    assert tok.encode("a b c d e") == [tok.token_to_id(w) for w in "abc"]
    assert tok.encode_batch(["a b c d e", "f"]) == [tok.encode("a b c"), tok.encode("f")]
    untruncated = TextTokenizer.train(["a b c d e f"], TokenizerConfig(max_length=0))
    assert len(untruncated.encode("a b c d e f a b")) == 8


def test_encode_batch_matches_encode():
    tok = TextTokenizer.train(TEXTS, TokenizerConfig())
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]


def test_load_of_a_bad_file_is_an_nlpseq_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(NlpseqError, match="tokenizer"):
        TextTokenizer.load(bad)


def test_ptb_bracket_escapes_read_as_brackets():
    # SST's sentence files write brackets as -lrb- / -rrb-, its GLUE files as ( / ).
    tok = TextTokenizer.train(["a ( b ) [ c ] { d }"], TokenizerConfig(lowercase=True))
    assert tok.tokens("-LRB- b -rrb- -lsb- c -RSB- -lcb- -rcb-") == ["(", "b", ")", "[", "c",
                                                                     "]", "{", "}"]
    assert tok.encode("-lrb- a -rrb-") == tok.encode("( a )")
    # Only whole tokens: a hyphenated word that contains an escape stays one word.
    assert tok.tokens("x-lrb-y") == ["<unk>"]
    assert tok.encode_words(["-LRB-", "a"]) == tok.encode("( a")
    off = TextTokenizer.train(["a ( b )"], TokenizerConfig(ptb_brackets=False))
    assert off.tokens("-lrb- a") == ["<unk>", "a"]


TRICKY = [
    "", "   ", "Plain words, and 42 numbers 3.14", "ΟΔΟΣ Σίσυφος İstanbul STRASSE ẞ ǅ",
    "tab\tnew\nline\r\nform\x0cfeed\x0bvt", "nbsp\xa0ideo\u3000thin\u2009nel\x85ls\u2028end",
    "\x1cfile\x1dgroup\x1erecord\x1funit", "zero\u200bwidth mongolian\u180evowel",
    "-LRB- x -rrb- -Lsb-y-rsb- a-lrb-b (-lcb-) -rcb-\xa0-lrb-\u3000-RRB-",
    "arabic ٣٤ digits ０１ fullwidth", "has <unk> and<pad>glued <bos><eos>", "ｆｕｌｌ Ｗｉｄｔｈ",
]


@pytest.mark.parametrize("options", [
    {}, {"lowercase": True}, {"normalize_digits": True}, {"ptb_brackets": False},
    {"lowercase": True, "normalize_digits": True, "max_length": 4},
])
def test_word_level_python_encoding_matches_rust(options):
    """encode_batch's Python path for word-level tokenizers gives the Rust tokenizer's ids."""
    texts = TRICKY + [f"a{chr(c)}b" for c in range(0x3000 + 1) if chr(c).isspace()]
    training = [text for text in TRICKY if "<" not in text] * 2
    tokenizer = TextTokenizer.train(training, TokenizerConfig(kind="word", **options))
    assert tokenizer._plan is not None
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(text) for text in texts]
    extended = tokenizer.extended(["zero", "unseen", "("])
    assert extended._plan is not None
    assert extended.encode_batch(texts) == [extended.encode(text) for text in texts]


def test_encode_words_gives_one_id_per_word():
    tok = TextTokenizer.train(["new york is big"], TokenizerConfig(lowercase=True))
    unk = tok.token_to_id("<unk>")
    # a word holding whitespace, an empty one or a special token's string glued to a word
    # would be several tokens or none: <unk>, so the ids of the others stay in place
    words = ["New", "New York", "", "is<pad>", "<pad>", "big", "new\u3000york", "York"]
    assert tok.encode_words(words) == [tok.token_to_id("new"), unk, unk, unk, 0,
                                       tok.token_to_id("big"), unk, tok.token_to_id("york")]


def test_char_level_python_encoding_matches_rust():
    """encode_batch's Python path for character tokenizers gives the Rust tokenizer's ids."""
    texts = TRICKY + ["".join(map(chr, range(start, start + 512)))
                      for start in range(0, 0x3000, 512)] + ["\U0001f600 emoji", "a\ud7ffb"]
    config = TokenizerConfig(kind="char", min_frequency=1)
    tokenizer = TextTokenizer.train([text for text in TRICKY if "<" not in text], config)
    assert type(tokenizer._plan).__name__ == "_CharLevelPlan"
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(text) for text in texts]
    assert tokenizer.encode_batch(["<unk>"]) == [[1]]  # a special token's string is one token
    lowered = TextTokenizer.train(["ab"], TokenizerConfig(kind="char", lowercase=True))
    assert lowered._plan is None  # a normaliser: the Rust tokenizer encodes
