"""Corpus readers: files on disk (``.gz`` read transparently) -> examples.

Labelled TSV/CSV/JSONL go through ``datasets`` (Arrow-backed, memory-mapped); every reader
reports bad input as :class:`NlpseqError` with the file and line.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nlpseq.errors import NlpseqError


def _check_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not str(path) or str(path) == ".":
        raise NlpseqError("no data file given")
    if path.is_dir():
        raise NlpseqError("is a directory, not a data file", path)
    if not path.is_file():
        raise NlpseqError("data file not found", path)
    return path


def _open_raw(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _gzip_error(err: Exception, path: Path, line: int | None) -> NlpseqError:
    if isinstance(err, EOFError):
        return NlpseqError("gzip file ends early (truncated?)", path, line)
    if str(err).startswith("Not a gzipped file"):
        return NlpseqError("not a valid gzip file", path, line)
    return NlpseqError(f"gzip data is corrupt ({err})", path, line)


class _RawBytes:
    """A data file's bytes (``.gz`` decompressed), by line or whole. Damaged gzip data is
    raised as NlpseqError here, for every reader: gzip's own exceptions would print a
    traceback, and an EOFError (truncated file) only click's bare ``Aborted!``."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = _open_raw(path)
        self._lines = 0

    def __enter__(self) -> _RawBytes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()

    def __iter__(self) -> Iterator[bytes]:
        try:
            for raw in self._handle:
                self._lines += 1
                yield raw
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            # failing before any line was read (not gzip at all) blames no line
            line = self._lines + 1 if self._lines else None
            raise _gzip_error(err, self.path, line) from None

    def read(self) -> bytes:
        """The whole (decompressed) file."""
        try:
            return self._handle.read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise _gzip_error(err, self.path, None) from None


def check_utf8(path: str | Path) -> None:
    """Raise NlpseqError naming the line of the first invalid UTF-8 byte (or an empty file)."""
    path = _check_file(path)
    empty = True
    with _RawBytes(path) as handle:
        for number, raw in enumerate(handle, 1):
            empty = empty and not raw.strip()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise NlpseqError(
                    f"invalid UTF-8 (byte {err.start} of the line)", path, number
                ) from None
    if empty:
        raise NlpseqError("data file is empty", path)


def _decode_lines(handle: Iterable[bytes], name: str | Path) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(handle, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise NlpseqError(
                f"invalid UTF-8 (byte {err.start} of the line)", name, number
            ) from None
        yield number, line.rstrip("\r\n")


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` without the newline; invalid UTF-8 is an error."""
    path = _check_file(path)
    with _RawBytes(path) as handle:
        yield from _decode_lines(handle, path)


def read_stdin_lines() -> Iterator[tuple[int, str]]:
    """:func:`read_lines` for standard input (bytes decoded here: the locale's text stdin
    would turn invalid UTF-8 into surrogates that fail later, far from the input line)."""
    import sys

    yield from _decode_lines(sys.stdin.buffer, "<stdin>")


def read_text(path: str | Path) -> str:
    """A whole text file (``.gz`` allowed) as one string."""
    path = _check_file(path)
    with _RawBytes(path) as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise NlpseqError("invalid UTF-8", path, line) from None
    if not text.strip():
        raise NlpseqError("data file is empty", path)
    return text


def _row_lines(path: Path, fmt: str) -> list[int] | None:
    """The file line each data row starts on (pandas and Arrow skip blank lines, so the row
    index alone would misplace errors); a TSV/CSV row whose field count differs from the
    header's is an error here, before it could shift a text into the label column.
    None when the csv module cannot follow the file (pandas then has the last word)."""
    import csv

    # gzip damage was reported by check_utf8, which reads the whole file first
    with io.TextIOWrapper(_open_raw(path), encoding="utf-8", newline="") as handle:
        if fmt == "jsonl":
            return [number for number, line in enumerate(handle, 1) if line.strip()]
        if fmt == "tsv":  # no quoting: one line is one row
            rows = ((n, line.rstrip("\r\n").split("\t")) for n, line in enumerate(handle, 1))
            rows = ((n, row) for n, row in rows if row != [""])
        else:
            reader = csv.reader(handle)

            def numbered() -> Iterator[tuple[int, list[str]]]:
                previous = 0
                for row in reader:
                    start, previous = previous + 1, reader.line_num
                    if row:
                        yield start, row

            rows = numbered()
        starts: list[int] = []
        width = None
        try:
            for start, row in rows:
                if width is None:
                    width = len(row)  # the header
                elif len(row) != width:
                    raise NlpseqError(
                        f"row has {len(row)} {fmt.upper()} fields, the header has {width}",
                        path, start,
                    )
                else:
                    starts.append(start)
        except csv.Error:  # e.g. a field over the csv module's size limit
            return None
    return starts


def _check_json_lines(path: Path) -> None:
    """Raise NlpseqError at the first line of a JSONL file that is not a JSON object."""
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise NlpseqError(f"invalid JSON: {err.msg} (column {err.colno})", path,
                              number) from None
        if not isinstance(row, dict):
            raise NlpseqError("line is not a JSON object", path, number)


@dataclass
class LabelledData:
    """Texts with string labels; ``lines[i]`` is the file line of example ``i``."""

    texts: list[str]
    labels: list[str | None]
    lines: list[int]
    path: str


def read_labelled(
    path: str | Path,
    fmt: str,
    text_column: str = "text",
    label_column: str = "label",
    *,
    require_labels: bool = True,
) -> LabelledData:
    """Read a TSV/CSV (with a header) or JSONL file of texts and labels through ``datasets``."""
    path = _check_file(path)
    check_utf8(path)
    import datasets  # heavy: imported only when a labelled file is read

    datasets.disable_progress_bars()
    # a failed load is reported below as one NlpseqError; datasets would log it too
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    if fmt in ("tsv", "csv"):
        kwargs = dict(
            delimiter="\t" if fmt == "tsv" else ",",
            quoting=3 if fmt == "tsv" else 0,  # TSV: quotes are text, not field delimiters
            keep_default_na=False,
        )
        builder, first_line = "csv", 2
    elif fmt == "jsonl":
        kwargs, builder, first_line = {}, "json", 1
    else:
        raise NlpseqError(f"format {fmt!r} is not a labelled-text format", path)
    row_lines = _row_lines(path, fmt)
    if row_lines == []:
        raise NlpseqError("data file has no rows", path)
    try:
        data = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # pandas/arrow parse errors carry their own line numbers
        if fmt == "jsonl":  # Arrow's "row" counts within a block: find the line ourselves
            _check_json_lines(path)
        raise NlpseqError(f"cannot parse {fmt.upper()}: {str(err).splitlines()[0]}", path) from None
    if fmt == "jsonl" and text_column not in data.column_names:
        _check_json_lines(path)  # a line such as [1, 2] loads as a column of its own
    if text_column not in data.column_names:
        raise NlpseqError(
            f"no column {text_column!r} (columns: {', '.join(data.column_names)})", path, 1
        )
    has_labels = label_column in data.column_names
    if require_labels and not has_labels:
        raise NlpseqError(
            f"no column {label_column!r} (columns: {', '.join(data.column_names)})", path, 1
        )
    # a JSONL row without the key reads as None, an empty TSV/CSV field as "": both missing
    texts = ["" if t is None else str(t) for t in data[text_column]]
    labels: list[str | None] = [None] * len(texts)
    if has_labels:
        labels = [None if v is None or str(v).strip() == "" else str(v) for v in data[label_column]]
    lines = row_lines
    if lines is None or len(lines) != len(texts):  # the scan could not mirror the layout
        lines = [first_line + i for i in range(len(texts))]
    for line, text, label in zip(lines, texts, labels):
        if not text.strip():
            raise NlpseqError(f"row has no value in column {text_column!r}", path, line)
        if require_labels and label is None:
            raise NlpseqError(f"row has no value in column {label_column!r}", path, line)
    if not texts:
        raise NlpseqError("data file has no rows", path)
    return LabelledData(texts, labels, lines, str(path))


def load_hub(name: str, config: str, split: str, timeout: float = 5.0):
    """Load a Hugging Face hub dataset split; fails within seconds when offline."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        raise NlpseqError(
            f"cannot reach the Hugging Face hub to download {name!r} (offline?); "
            "download it elsewhere and point data.train/data.dev at local files"
        ) from None
    import datasets

    try:
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as err:
        raise NlpseqError(f"hub dataset {name!r}: {str(err).splitlines()[0]}") from None


@dataclass
class ParallelData:
    """Line-parallel sentence pairs; ``lines[i]`` is the file line of pair ``i``."""

    sources: list[str]
    targets: list[str]
    lines: list[int]
    source_path: str
    target_path: str

    def select(self, keep: list[bool]) -> ParallelData:
        """The pairs where ``keep`` is true."""
        pick = [i for i, k in enumerate(keep) if k]
        return ParallelData(
            [self.sources[i] for i in pick], [self.targets[i] for i in pick],
            [self.lines[i] for i in pick], self.source_path, self.target_path,
        )


def read_parallel(source: str | Path, target: str | Path) -> ParallelData:
    """Read line-parallel source and target files (``.gz`` read transparently).

    Line ``i`` of one file translates line ``i`` of the other, so files with different line
    counts are an error naming both files and both counts. Pairs where either side is empty
    are kept here (the task drops them from training and reports how many).
    """
    sources = [line.strip() for _, line in read_lines(source)]
    targets = [line.strip() for _, line in read_lines(target)]
    if len(sources) != len(targets):
        raise NlpseqError(
            f"parallel files differ in length: {source} has {len(sources)} lines, "
            f"{target} has {len(targets)} lines"
        )
    if not sources:
        raise NlpseqError("data file is empty", source)
    return ParallelData(sources, targets, list(range(1, len(sources) + 1)), str(source),
                        str(target))


@dataclass
class TaggedData:
    """Sentences of tokens with one tag per token (``tags`` is None for untagged input);
    ``lines[i]`` is the file line sentence ``i`` starts on."""

    tokens: list[list[str]]
    tags: list[list[str]] | None
    lines: list[int]
    path: str


def parse_conll(
    lines: Iterable[tuple[int, str]],
    path: str | Path,
    tag_column: int = -1,
    scheme: str | None = None,
    *,
    require_tags: bool = True,
) -> TaggedData:
    """Parse numbered CoNLL column lines (``token ... tag``, whitespace-separated).

    Blank lines end sentences; ``-DOCSTART-`` lines are document boundaries, not tokens. Every
    token line must have as many columns as the first one. With ``scheme`` each tag is checked
    against it. Without ``require_tags`` a one-column file (tokens only) is accepted.
    """
    from nlpseq.tagschemes import validate_tag

    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    starts: list[int] = []
    sentence: list[str] = []
    sentence_tags: list[str] = []
    width = column = first_line = None
    valid: set[str] = set()  # tags already checked against the scheme

    def close() -> None:
        if sentence:
            tokens.append(list(sentence))
            tags.append(list(sentence_tags))
            sentence.clear()
            sentence_tags.clear()

    for number, line in lines:
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            close()
            continue
        if width is None:
            width, first_line = len(fields), number
            if require_tags and width < 2:
                raise NlpseqError("expected at least 2 columns (token and tag), found 1",
                                  path, number)
            if width > 1:
                column = tag_column if tag_column >= 0 else width + tag_column
                if not 1 <= column < width:
                    raise NlpseqError(
                        f"tag column {tag_column} does not exist in {width} columns "
                        "(column 0 is the token)", path, number,
                    )
        elif len(fields) != width:
            raise NlpseqError(
                f"line has {len(fields)} columns, the first token line (line {first_line}) "
                f"has {width}", path, number,
            )
        if not sentence:
            starts.append(number)
        sentence.append(fields[0])
        if column is not None:
            tag = fields[column]
            if scheme is not None and tag not in valid:
                try:
                    validate_tag(tag, scheme)
                except ValueError as err:
                    raise NlpseqError(str(err), path, number) from None
                valid.add(tag)
            sentence_tags.append(tag)
    close()
    if not tokens:
        raise NlpseqError("no sentences in the CoNLL data", path)
    return TaggedData(tokens, tags if column is not None else None, starts, str(path))


def read_conll(
    path: str | Path,
    tag_column: int = -1,
    scheme: str | None = None,
    *,
    require_tags: bool = True,
) -> TaggedData:
    """Read a CoNLL column file (``.gz`` allowed); see :func:`parse_conll`."""
    path = _check_file(path)
    return parse_conll(read_lines(path), path, tag_column, scheme, require_tags=require_tags)
