"""Labelled-text readers: formats, gzip, and bad input named by file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from nlpseq.corpora import (
    check_utf8,
    looks_like_conll,
    read_conll,
    read_labelled,
    read_lines,
    read_parallel,
    read_text,
)
from nlpseq.errors import NlpseqError


def write(tmp_path, name: str, data: str | bytes):
    path = tmp_path / name
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def test_tsv_keeps_quotes_and_string_labels(tmp_path):
    path = write(tmp_path, "d.tsv", 'label\ttext\n1\the said "great" film\n0\tbad , \'meh\'\n')
    data = read_labelled(path, "tsv")
    assert data.texts == ['he said "great" film', "bad , 'meh'"]
    assert data.labels == ["1", "0"]
    assert data.lines == [2, 3]
    assert data.path == str(path)


def test_csv_jsonl_and_gzip(tmp_path):
    csv = write(tmp_path, "d.csv", 'sentence,y\n"good, really",pos\nbad,neg\n')
    data = read_labelled(csv, "csv", "sentence", "y")
    assert (data.texts, data.labels) == (["good, really", "bad"], ["pos", "neg"])
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    jsonl = write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert read_labelled(jsonl, "jsonl").labels == ["1", "0"]
    gz = tmp_path / "d.tsv.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as handle:
        handle.write("label\ttext\npos\tgood\n")
    assert read_labelled(gz, "tsv").texts == ["good"]


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    path = write(tmp_path, "d.tsv", "label\ttext\n1\tgood\n\n0\tbad\n\n\n\tno label\n")
    with pytest.raises(NlpseqError) as err:
        read_labelled(path, "tsv")
    assert (err.value.path, err.value.line) == (str(path), 7)
    ok = write(tmp_path, "ok.tsv", "label\ttext\n1\tgood\n\n0\tbad\n")
    assert read_labelled(ok, "tsv").lines == [2, 4]


def test_row_without_label_field_is_an_error_not_a_label(tmp_path):
    # The text "awful" must not become a label when the label column comes first.
    path = write(tmp_path, "d.tsv", "label\ttext\n1\tgood film\n0\tbad film\nawful\n")
    with pytest.raises(NlpseqError) as err:
        read_labelled(path, "tsv")
    assert (err.value.path, err.value.line) == (str(path), 4)
    assert "fields" in str(err.value)


def test_csv_row_with_missing_field_and_multiline_quotes(tmp_path):
    path = write(tmp_path, "d.csv", 'label,text\npos,"two\nlines"\n\nneg\n')
    with pytest.raises(NlpseqError, match="1 CSV fields") as err:
        read_labelled(path, "csv")
    assert err.value.line == 5
    ok = write(tmp_path, "ok.csv", 'label,text\npos,"two\nlines"\n\nneg,bad\n')
    data = read_labelled(ok, "csv")
    assert data.texts == ["two\nlines", "bad"] and data.lines == [2, 5]


def test_very_long_fields(tmp_path):
    long = "word " * 40000  # longer than the csv module's default field limit
    for fmt, sep in (("tsv", "\t"), ("csv", ",")):
        path = write(tmp_path, f"d.{fmt}", f"label{sep}text\npos{sep}{long}\nneg{sep}bad\n")
        assert read_labelled(path, fmt).texts[0] == long


def test_row_with_empty_label(tmp_path):
    path = write(tmp_path, "d.tsv", "text\tlabel\ngood\t1\nbad\t\n")
    with pytest.raises(NlpseqError, match="no value in column 'label'") as err:
        read_labelled(path, "tsv")
    assert err.value.line == 3
    data = read_labelled(path, "tsv", require_labels=False)
    assert data.labels == ["1", None]


def test_jsonl_row_without_label(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b"}\n')
    with pytest.raises(NlpseqError) as err:
        read_labelled(path, "jsonl")
    assert (err.value.path, err.value.line) == (str(path), 3)


def test_missing_column(tmp_path):
    path = write(tmp_path, "d.tsv", "label\tsentence\n1\tgood\n")
    with pytest.raises(NlpseqError, match="no column 'text'") as err:
        read_labelled(path, "tsv")
    assert err.value.line == 1


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\n  \n", "empty"),
    (b"label\ttext\n", "no rows"),
])
def test_empty_files(tmp_path, content, message):
    path = write(tmp_path, "d.tsv", content)
    with pytest.raises(NlpseqError, match=message) as err:
        read_labelled(path, "tsv")
    assert err.value.path == str(path)


def test_missing_file(tmp_path):
    with pytest.raises(NlpseqError, match="not found") as err:
        read_labelled(tmp_path / "none.tsv", "tsv")
    assert err.value.path == str(tmp_path / "none.tsv")


def test_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "d.tsv", b"label\ttext\n1\tgood\n0\tcaf\xe9\n")
    for read in (lambda: read_labelled(path, "tsv"), lambda: check_utf8(path),
                 lambda: list(read_lines(path)), lambda: read_text(path)):
        with pytest.raises(NlpseqError, match="UTF-8") as err:
            read()
        assert (err.value.path, err.value.line) == (str(path), 3)


def test_read_lines_and_text(tmp_path):
    path = write(tmp_path, "t.txt", "one\r\ntwo\n\nthree")
    assert list(read_lines(path)) == [(1, "one"), (2, "two"), (3, ""), (4, "three")]
    assert read_text(path) == "one\ntwo\n\nthree"  # line ends as LF


def test_hub_dataset_fails_fast_offline(monkeypatch):
    import socket

    from nlpseq.corpora import load_hub

    attempts = []

    def offline(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(NlpseqError, match="offline"):
        load_hub("glue", "sst2", "train")
    # fast: one probe with a bounded timeout, no retries, before datasets is asked
    assert attempts == [(("huggingface.co", 443), 5.0)]


def test_gensim_data_fails_fast_offline(monkeypatch):
    import socket

    from nlpseq.embeddings import GENSIM_DATA_OPT_IN, load_vectors

    monkeypatch.setenv(GENSIM_DATA_OPT_IN, "1")
    monkeypatch.setattr(socket, "create_connection",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    with pytest.raises(NlpseqError, match="offline"):
        load_vectors("glove-wiki-gigaword-50", "gensim-data")


def test_damaged_gzip_is_an_error_naming_the_file(tmp_path):
    not_gzip = write(tmp_path, "plain.tsv.gz", "label\ttext\n1\tgood\n")
    rows = "".join(f"1\tsentence number {i} of a longer file\n" for i in range(3000))
    truncated = tmp_path / "cut.tsv.gz"
    truncated.write_bytes(gzip.compress(("label\ttext\n" + rows).encode())[:2000])
    readers = (lambda p: read_labelled(p, "tsv"), check_utf8, lambda p: list(read_lines(p)),
               read_text)
    for read in readers:
        with pytest.raises(NlpseqError, match="^.*: not a valid gzip file$") as err:
            read(not_gzip)
        assert (err.value.path, err.value.line) == (str(not_gzip), None)
        with pytest.raises(NlpseqError, match="gzip file ends early") as err:
            read(truncated)
        assert err.value.path == str(truncated)
    with pytest.raises(NlpseqError) as err:  # read line by line: where reading stopped
        list(read_lines(truncated))
    assert err.value.line is not None and 1 < err.value.line <= 3001


def test_malformed_jsonl_names_the_line_quietly(tmp_path, capfd):
    path = write(tmp_path, "d.jsonl",
                 '{"text": "a", "label": 1}\n\n{"text": "b" "label": 0}\n{"text": "c"\n')
    capfd.readouterr()
    with pytest.raises(NlpseqError, match="invalid JSON") as err:
        read_labelled(path, "jsonl")
    assert (err.value.path, err.value.line) == (str(path), 3)
    assert capfd.readouterr().err == ""  # no log line from datasets besides the error


@pytest.mark.parametrize("name, content, line", [
    ("d.jsonl", '{"text": "a", "label": 1}\n\n{"label": 0}\n', 3),
    ("d.jsonl", '{"text": "a", "label": 1}\n{"text": null, "label": 0}\n', 2),
    ("d.jsonl", '{"text": "a", "label": 1}\n{"text": " ", "label": 0}\n', 2),
    ("d.tsv", "label\ttext\n1\tgood\n\n0\t\n", 4),
    ("d.csv", 'label,text\n1,good\n0,""\n', 3),
])
def test_row_without_text_is_an_error(tmp_path, name, content, line):
    path = write(tmp_path, name, content)
    for require_labels in (True, False):
        with pytest.raises(NlpseqError, match="no value in column 'text'") as err:
            read_labelled(path, name.split(".")[1], require_labels=require_labels)
        assert (err.value.path, err.value.line) == (str(path), line)


def test_directory_is_not_a_data_file(tmp_path):
    for read in (lambda p: read_labelled(p, "tsv"), lambda p: list(read_lines(p)), read_text):
        with pytest.raises(NlpseqError, match="is a directory, not a data file") as err:
            read(tmp_path)
        assert err.value.path == str(tmp_path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path, "d.jsonl", '[1, 2]\n[3, 4]\n')
    with pytest.raises(NlpseqError, match="line is not a JSON object") as err:
        read_labelled(path, "jsonl")
    assert (err.value.path, err.value.line) == (str(path), 1)


def windows(text: str) -> bytes:
    """``text`` as a Windows editor saves it: a UTF-8 byte order mark and CRLF line ends."""
    return b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8")


@pytest.mark.parametrize("name, text", [
    ("d.tsv", "label\ttext\npos\tgood film\n\nneg\tbad \"film\"\n"),
    ("d.csv", 'label,text\npos,"good,\nfilm"\n\nneg,bad\n'),
    ("d.jsonl", '{"text": "good", "label": "pos"}\n\n{"label": "neg", "text": "bad"}\n'),
])
def test_labelled_windows_file_reads_as_the_clean_one(tmp_path, name, text):
    fmt = name.split(".")[1]
    clean = read_labelled(write(tmp_path, name, text), fmt)
    other = read_labelled(write(tmp_path, "w" + name, windows(text)), fmt)
    assert (other.texts, other.labels, other.lines) == (clean.texts, clean.labels, clean.lines)
    assert clean.labels == ["pos", "neg"] and "\r" not in "".join(clean.texts)
    gz = tmp_path / f"w{name}.gz"
    gz.write_bytes(gzip.compress(windows(text)))
    assert read_labelled(gz, fmt).texts == clean.texts


def test_conll_parallel_and_raw_windows_files_read_as_the_clean_ones(tmp_path):
    conll = "-DOCSTART- -X- O\n\nEU NNP I-ORG\nrejects VBZ O\n\nPeter NNP I-PER\n"
    clean = read_conll(write(tmp_path, "a.conll", conll), scheme="IOB1")
    other = read_conll(write(tmp_path, "b.conll", windows(conll)), scheme="IOB1")
    assert (other.tokens, other.tags, other.lines) == (clean.tokens, clean.tags, clean.lines)
    assert clean.tokens == [["EU", "rejects"], ["Peter"]]
    source, target = "ein Haus\nzwei\n", "a house\ntwo\n"
    pairs = read_parallel(write(tmp_path, "s.de", windows(source)),
                          write(tmp_path, "t.en", windows(target)))
    assert (pairs.sources, pairs.targets) == (["ein Haus", "zwei"], ["a house", "two"])
    text = "First line.\nSecond line.\n"
    assert read_text(write(tmp_path, "r.txt", windows(text))) == text
    assert list(read_lines(write(tmp_path, "l.txt", windows(text)))) == [
        (1, "First line."), (2, "Second line.")]


def test_a_byte_order_mark_after_the_start_is_text(tmp_path):
    path = write(tmp_path, "t.txt", "one\n\ufefftwo\n")
    assert list(read_lines(path)) == [(1, "one"), (2, "\ufefftwo")]


def test_csv_with_an_unclosed_quote_names_the_line(tmp_path):
    path = write(tmp_path, "d.csv", 'label,text\npos,good\nneg,"bad\n')
    with pytest.raises(NlpseqError, match="cannot parse CSV") as err:
        read_labelled(path, "csv")
    assert (err.value.path, err.value.line) == (str(path), 3)


def test_values_are_kept_as_written(tmp_path):
    # no type guessing: "007" stays "007", "1e3" is not a number, "NA" is not missing
    path = write(tmp_path, "d.tsv", "label\ttext\n007\t1e3\nNA\tnull\n")
    data = read_labelled(path, "tsv")
    assert (data.labels, data.texts) == (["007", "NA"], ["1e3", "null"])


@pytest.mark.parametrize("head, expected", [
    (["-DOCSTART- -X- O", "", "EU NNP I-ORG"], True),
    (["EU NNP I-ORG", "rejects VBZ O", "", "Peter NNP I-PER"], True),
    (["EU", "rejects", "", "Peter"], True),  # one token a line, blank lines between
    (["EU rejects German call .", "Peter Blackburn"], False),
    (["EU NNP", "rejects VBZ"], False),  # the last column is not a tag
    (["EU NNP I-ORG"], False),  # one line is a sentence, not a CoNLL block
    (["", ""], False),
])
def test_looks_like_conll(head, expected):
    assert looks_like_conll(head, -1, "IOB1") is expected


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_labelled_files_are_read_a_part_at_a_time(tmp_path, fmt, monkeypatch):
    """The first part comes before the rest is read: an error on the last line is raised
    only when the reading reaches it, with its line."""
    from nlpseq import corpora

    rows = [(f"text {i}", "pos" if i % 2 else "neg") for i in range(10)]
    if fmt == "jsonl":
        lines = [json.dumps({"text": t, "label": lab}) for t, lab in rows] + ["{oops"]
    else:
        sep = "\t" if fmt == "tsv" else ","
        lines = [f"text{sep}label"] + [f"{t}{sep}{lab}" for t, lab in rows] + [f"x{sep}y{sep}z"]
    path = tmp_path / f"data.{fmt}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(corpora, "BLOCK", 4)
    parts = corpora.iter_labelled(path, fmt)
    first = next(parts)
    assert first.texts == [t for t, _ in rows[:4]] and first.labels == [b for _, b in rows[:4]]
    assert first.lines == ([1, 2, 3, 4] if fmt == "jsonl" else [2, 3, 4, 5])
    assert next(parts).texts == [t for t, _ in rows[4:8]]
    with pytest.raises(NlpseqError) as err:  # the part that would hold the last two rows
        next(parts)
    assert err.value.line == len(lines)


def test_parallel_files_are_read_a_part_at_a_time(tmp_path, monkeypatch):
    """Parts of BLOCK pairs, in order, with their lines; a length difference is found where
    the shorter file ends, after the parts before it, and names both counts."""
    from nlpseq import corpora

    source = write(tmp_path, "s.de", "".join(f"q{i}\n" for i in range(7)))
    target = write(tmp_path, "t.en", "".join(f"a{i}\n" for i in range(7)))
    monkeypatch.setattr(corpora, "BLOCK", 3)
    parts = list(corpora.iter_parallel(source, target))
    assert [p.sources for p in parts] == [["q0", "q1", "q2"], ["q3", "q4", "q5"], ["q6"]]
    assert [p.targets[0] for p in parts] == ["a0", "a3", "a6"]
    assert [p.lines for p in parts] == [[1, 2, 3], [4, 5, 6], [7]]
    whole = read_parallel(source, target)
    assert whole.sources == [s for p in parts for s in p.sources]
    assert whole.lines == list(range(1, 8))
    longer = write(tmp_path, "l.en", "".join(f"a{i}\n" for i in range(9)))
    reading = corpora.iter_parallel(source, longer)
    assert next(reading).sources == ["q0", "q1", "q2"]
    next(reading)
    with pytest.raises(NlpseqError, match=r"s\.de has 7 lines, .*l\.en has 9 lines"):
        next(reading)
    with pytest.raises(NlpseqError, match=r"l\.en has 9 lines, .*s\.de has 7 lines"):
        list(corpora.iter_parallel(longer, source))
    empty = write(tmp_path, "e.de", "")
    with pytest.raises(NlpseqError, match="empty"):
        list(corpora.iter_parallel(empty, write(tmp_path, "e.en", "")))


def test_text_is_read_in_pieces_of_whole_lines(tmp_path, monkeypatch):
    """Pieces of a few bytes join to read_text's text: the byte order mark dropped, CRLF as
    LF (never split), characters of 2-4 bytes cut by a read completed by the next; every
    piece but the last ends a line. Invalid UTF-8 is raised with its line when reached."""
    from nlpseq import corpora

    text = "\ufeffab\r\ncdé中😀\r\n\r\nwer\u0308 no line end"
    path = write(tmp_path, "t.txt", "")
    path.write_bytes(text.encode("utf-8"))
    gz = tmp_path / "t.txt.gz"
    gz.write_bytes(gzip.compress(text.encode("utf-8")))
    expected = text[1:].replace("\r\n", "\n")
    for block in range(1, 12):
        monkeypatch.setattr(corpora, "TEXT_BLOCK", block)
        for source in (path, gz):
            pieces = list(corpora.iter_text(source))
            assert "".join(pieces) == expected == read_text(source)
            assert all(piece.endswith("\n") for piece in pieces[:-1])
    monkeypatch.setattr(corpora, "TEXT_BLOCK", 4)
    path.write_bytes(b"one\ntwo\nthree \xff\n")
    reading = corpora.iter_text(path)
    assert next(reading) == "one\n"
    with pytest.raises(NlpseqError, match="invalid UTF-8") as err:
        list(reading)
    assert err.value.line == 3
    path.write_bytes(b"cut \xe4\xb8")  # a character cut at the end of the file
    with pytest.raises(NlpseqError, match="invalid UTF-8"):
        list(corpora.iter_text(path))
    path.write_bytes(b" \n\t\n")
    with pytest.raises(NlpseqError, match="empty"):
        list(corpora.iter_text(path))


def test_conll_is_parsed_a_block_at_a_time(tmp_path, monkeypatch):
    from nlpseq import corpora

    lines = list(enumerate(["-DOCSTART- O", "", "a O", "b B-X", "", "", "", "c O", "",
                            "-DOCSTART- O", "", ""], 1))
    blocks = list(corpora.iter_conll(lines, "in.conll", block_lines=2))
    assert [b.tokens for b in blocks] == [[["a", "b"]], [["c"]]]
    assert [b.lines for b in blocks] == [[3], [8]]
    with pytest.raises(NlpseqError, match="no sentences"):
        list(corpora.iter_conll(lines[:2], "in.conll", block_lines=1))
