"""Inputs people really produce: each read as its clean form or refused with one line naming
file, line and problem (quoted TSV, padded labels, Windows files on stdin, NaN in vectors,
decoding settings at their extremes, very long lines)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import ROOT, assert_one_line_error, invoke
from test_safety import PREDICT, runs  # noqa: F401  (the shared trained runs fixture)

from nlpseq.corpora import MAX_LINE_BYTES, read_labelled, read_lines
from nlpseq.decoding import MAX_BEAM, MAX_GENERATE_LENGTH
from nlpseq.errors import NlpseqError

CLEAN = [("pos", 'a "fine" film'), ("neg", "dull,\tslow")]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


# --- labelled files -----------------------------------------------------------------------
def test_fully_quoted_tsv_reads_as_its_clean_form(tmp_path):
    quoted = write(tmp_path / "q.tsv", '"label"\t"text"\n"pos"\t"a ""fine"" film"\n'
                                       '"neg"\t"dull, slow"\n')
    data = read_labelled(quoted, "tsv")
    assert data.labels == ["pos", "neg"]
    assert data.texts == ['a "fine" film', "dull, slow"]


def test_tsv_quotes_are_kept_when_the_header_is_not_quoted(tmp_path):
    plain = write(tmp_path / "p.tsv", 'label\ttext\npos\t"a quote"\n')
    assert read_labelled(plain, "tsv").texts == ['"a quote"']


def test_quoted_tsv_with_a_lone_quote_is_an_error_naming_the_line(tmp_path):
    bad = write(tmp_path / "b.tsv", '"label"\t"text"\n"pos"\t"a "fine" film"\n')
    with pytest.raises(NlpseqError, match="lone quote") as caught:
        read_labelled(bad, "tsv")
    assert caught.value.line == 2 and caught.value.path == str(bad)


def test_fully_quoted_csv_reads_as_its_clean_form(tmp_path):
    quoted = write(tmp_path / "q.csv", '"label","text"\r\n"pos","a ""fine"" film"\r\n'
                                       '"neg","dull,\tslow"\r\n')
    data = read_labelled(quoted, "csv")
    assert list(zip(data.labels, data.texts)) == CLEAN


@pytest.mark.parametrize("fmt, text", [
    ("tsv", "label \t text\n pos\tgood film\nneg  \tbad film\n"),
    ("csv", "label , text\n pos,good film\nneg  ,bad film\n"),
    ("jsonl", '{"label": " pos", "text": "good film"}\n{"label": "neg  ", "text": "bad film"}\n'),
])
def test_labels_and_column_names_padded_with_spaces_are_the_same_labels(fmt, text, tmp_path):
    data = read_labelled(write(tmp_path / f"p.{fmt}", text), fmt)
    assert data.labels == ["pos", "neg"]


@pytest.mark.parametrize("task", sorted(PREDICT))
def test_windows_text_on_stdin_predicts_as_the_clean_text(task, runs):  # noqa: F811
    """A byte order mark and CRLF line ends on standard input, for every task's prediction
    (NER's first line is then a CoNLL-or-text guess that must not see the mark)."""
    command, line = PREDICT[task]
    clean = invoke(command, runs[task], input=f"{line}\nso dull\n", check=True)
    windows = invoke(command, runs[task], input=f"\ufeff{line}\r\nso dull\r\n".encode(),
                     check=True)
    assert windows.stdout == clean.stdout


def test_conll_file_with_a_bom_and_crlf_evaluates_as_the_clean_file(runs, tmp_path):  # noqa: F811
    clean = (ROOT / "corpora/ner/dev.txt").read_text(encoding="utf-8")
    windows = write(tmp_path / "dev.txt", "\ufeff" + clean.replace("\n", "\r\n"))
    want = invoke("evaluate", runs["ner"], ROOT / "corpora/ner/dev.txt", "--json", check=True)
    got = invoke("evaluate", runs["ner"], windows, "--json", check=True)
    assert got.stdout == want.stdout


# --- embeddings ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("fmt, header", [("glove", ""), ("word2vec", "3 2\n")])
def test_nan_or_infinity_in_a_vectors_row_is_an_error_naming_the_line(value, fmt, header,
                                                                      tmp_path):
    from nlpseq.embeddings import load_vectors

    path = write(tmp_path / "v.txt", f"{header}the 0.1 0.2\ncat 0.3 {value}\ndog 0.5 0.6\n")
    with pytest.raises(NlpseqError, match="'cat' holds NaN or an infinity") as caught:
        load_vectors(str(path), fmt)
    assert caught.value.line == 2 + bool(header)


# --- decoding at its extremes -------------------------------------------------------------
def generate(run: Path, *options: object):
    return invoke("generate", run, "--prompt", "the", *map(str, options))


def test_tiny_temperature_is_greedy_and_huge_temperature_still_samples(runs):  # noqa: F811
    greedy = generate(runs["chargen"], "--temperature", 0, "--length", 30)
    tiny = generate(runs["chargen"], "--temperature", 1e-9, "--length", 30, "--seed", 1)
    assert tiny.exit_code == greedy.exit_code == 0
    assert tiny.stdout == greedy.stdout
    huge = generate(runs["chargen"], "--temperature", 1e9, "--length", 30, "--seed", 1)
    assert huge.exit_code == 0 and len(huge.stdout.rstrip("\n")) == len("the") + 30


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_temperature_that_is_not_a_finite_number_is_refused(value, runs):  # noqa: F811
    assert_one_line_error(generate(runs["chargen"], "--temperature", value, "--length", 5),
                          "temperature must be a finite number")


def test_seeds_beyond_64_bits_are_taken_modulo_two_to_the_64(runs):  # noqa: F811
    big = generate(runs["chargen"], "--seed", 2**70 + 5, "--length", 40)
    small = generate(runs["chargen"], "--seed", (2**70 + 5) % 2**64, "--length", 40)
    assert big.exit_code == 0 and big.stdout == small.stdout


def test_huge_generation_length_is_refused_naming_the_limit(runs):  # noqa: F811
    assert_one_line_error(generate(runs["chargen"], "--length", 10**11),
                          f"{MAX_GENERATE_LENGTH:,}")


def test_huge_beam_is_refused_naming_the_limit(runs, tmp_path):  # noqa: F811
    result = invoke("translate", runs["translate"], "--beam", 10**10, input="a man\n")
    assert result.exit_code == 2 and f"1<=x<={MAX_BEAM}" in result.stderr
    from nlpseq.config import load_config

    with pytest.raises(NlpseqError, match="eval.beam"):
        load_config(runs["translate"] / "config.yaml", [f"eval.beam={MAX_BEAM + 1}"])


def test_huge_decoding_lengths_are_capped():
    import torch

    from nlpseq.decoding import max_target_lengths

    lengths = max_target_lengths(torch.tensor([3, 10**6]), a=1e9, b=10)
    assert lengths.tolist() == [MAX_GENERATE_LENGTH, MAX_GENERATE_LENGTH]
    assert max_target_lengths(torch.tensor([4]), a=1.5, b=10).tolist() == [16]


# --- very long lines ----------------------------------------------------------------------
@pytest.mark.parametrize("task", sorted(PREDICT))
def test_a_line_over_the_limit_is_refused_naming_it_without_reading_it_whole(task, runs,  # noqa: F811
                                                                              tmp_path):
    command, _ = PREDICT[task]
    path = tmp_path / "long.txt"
    path.write_bytes(b"short line\n" + b"word " * (MAX_LINE_BYTES // 5 + 10) + b"\n")
    assert_one_line_error(invoke(command, runs[task], "--input", path),
                          f"{path}:2:", f"{MAX_LINE_BYTES:,} bytes")
    assert_one_line_error(invoke(command, runs[task], input=path.read_bytes()),
                          "<stdin>:2:", f"{MAX_LINE_BYTES:,} bytes")


def test_the_line_limit_reads_at_most_one_piece_past_it(tmp_path):
    import tracemalloc

    path = tmp_path / "endless.txt"
    path.write_bytes(b"x" * (20 * MAX_LINE_BYTES))  # no line break at all
    tracemalloc.start()
    try:
        with pytest.raises(NlpseqError, match="longer than"):
            list(read_lines(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_LINE_BYTES


def test_a_line_at_the_limit_is_read_one_past_it_is_not(tmp_path):
    path = tmp_path / "limit.txt"
    path.write_bytes(b"y" * MAX_LINE_BYTES + b"\n" + b"z" * MAX_LINE_BYTES)
    assert [len(line) for _, line in read_lines(path)] == [MAX_LINE_BYTES] * 2
    path.write_bytes(b"y" * (MAX_LINE_BYTES + 1) + b"\n")
    with pytest.raises(NlpseqError, match="longer than") as caught:
        list(read_lines(path))
    assert caught.value.line == 1


def test_long_chargen_line_is_scored_in_windows_as_one_text(runs):  # noqa: F811
    """A line much longer than the scoring window gets the score of one pass over it."""
    import nlpseq
    from nlpseq.lmdata import evaluate_stream
    from nlpseq.tasks.chargen import PREDICT_WINDOW

    task = nlpseq.load(runs["chargen"])
    text = ("the lantern burned low and the night was long. " * 300)[: 3 * PREDICT_WINDOW]
    ids, _ = task.codec.encode(text)
    whole = evaluate_stream(task.model, ids, 1, len(ids), task.device)
    (windowed,) = task.predict([text])
    assert windowed["n_chars"] == whole["n_chars"] == len(text) - 1
    assert math.isclose(windowed["loss"], whole["loss"], rel_tol=1e-5)


# --- property-based: random bytes and random YAML -----------------------------------------
# The only outcomes allowed are a result or NlpseqError; anything else (a traceback) fails.
# make test runs a bounded number of examples; the slow marker runs many more.
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=50, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# bytes that look like the files: separators, quotes, tags, numbers, BOM, CR, invalid UTF-8
PIECES = [b"\t", b",", b'"', b"\n", b"\r\n", b" ", b"\xef\xbb\xbf", b"label", b"text", b"pos",
          b"B-PER", b"I-LOC", b"O", b"-DOCSTART-", b"0.5", b"nan", b"1e999", b"-", b"{", b"}",
          b'{"text": "a", "label": "b"}', b"[", b"]", b":", b"\xff", b"\xc3", b"\x00", b"2 3"]
FILE_BYTES = st.one_of(st.binary(max_size=300),
                       st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join))


def _in_file(data: bytes, suffix: str, call) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        try:
            call(path)
        except NlpseqError:
            pass


def _readers(path: Path) -> None:
    from nlpseq.corpora import read_conll, read_parallel, read_text
    from nlpseq.embeddings import load_vectors

    for name in ("tsv", "csv", "jsonl"):
        _attempt(lambda name=name: read_labelled(path, name))
    for scheme in (None, "iob1", "iob2", "bioes"):
        _attempt(lambda scheme=scheme: read_conll(path, -1, scheme))
    _attempt(lambda: read_parallel(path, path))
    _attempt(lambda: read_text(path))
    _attempt(lambda: list(read_lines(path)))
    for fmt in ("glove", "word2vec", "word2vec-binary"):
        _attempt(lambda fmt=fmt: load_vectors(str(path), fmt))


def _attempt(call) -> None:
    try:
        call()
    except NlpseqError:
        pass


def check_readers(data: bytes) -> None:
    _in_file(data, ".txt", _readers)


def check_gzip_readers(data: bytes) -> None:
    import gzip

    _in_file(gzip.compress(data)[: max(len(data) // 2, 10)] if data else b"",
             ".txt.gz", _readers)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.text(max_size=20), st.sampled_from(["nan", ".inf", "${HOME}", "${X:-"]))
_SECTIONS = ["task", "data", "tokenizer", "embeddings", "model", "train", "eval", "tune", "x"]
_KEYS = ["format", "train", "dev", "kind", "lr", "epochs", "beam", "hidden_size", "pooling",
         "tag_scheme", "seed", "cell", "max_size", "batch_size", "resume", "unknown"]


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


YAML_DOCS = st.one_of(
    st.recursive(_SCALARS, _containers, max_leaves=20),
    st.fixed_dictionaries({"task": st.sampled_from(["sentiment", "ner", "chargen",
                                                     "translate", "nope", 3])},
                          optional={s: st.dictionaries(st.sampled_from(_KEYS), _SCALARS,
                                                       max_size=5) for s in _SECTIONS[1:]}),
)


def check_config_yaml(document, raw: bytes) -> None:
    import yaml

    from nlpseq.config import load_config

    text = yaml.safe_dump(document, allow_unicode=True).encode()
    for data in (text, raw, text[: len(text) // 2]):
        _in_file(data, ".yaml", load_config)


@FAST
@given(FILE_BYTES)
def test_random_bytes_into_every_reader(data):
    check_readers(data)


@FAST
@given(FILE_BYTES)
def test_random_bytes_into_every_reader_through_gzip(data):
    check_gzip_readers(data)


@FAST
@given(YAML_DOCS, FILE_BYTES)
def test_random_yaml_into_the_config_loader(document, raw):
    check_config_yaml(document, raw)


@pytest.mark.slow
@LONG
@given(FILE_BYTES)
def test_random_bytes_into_every_reader_long(data):
    check_readers(data)
    check_gzip_readers(data)


@pytest.mark.slow
@LONG
@given(YAML_DOCS, FILE_BYTES)
def test_random_yaml_into_the_config_loader_long(document, raw):
    check_config_yaml(document, raw)
