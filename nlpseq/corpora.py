"""Corpus readers: files on disk (``.gz`` read transparently) -> examples.

Every reader reads its file once, line by line, reports bad input as :class:`NlpseqError`
with the file and line, and reads Windows files (a UTF-8 byte order mark, CRLF line ends) as
the same file written without them. ``datasets`` is used for Hugging Face hub corpora only:
for a local file it would only add two more passes (its own parse and a UTF-8 check before),
since the texts end up as Python strings either way.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import socket
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nlpseq.errors import NlpseqError

#: rows (labelled files) or lines (CoNLL) that the streaming readers parse at a time
BLOCK = 10_000


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

    def readline(self, limit: int = -1) -> bytes:
        """One line of at most ``limit`` bytes (the rest of a longer line comes next)."""
        try:
            raw = self._handle.readline(limit)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            line = self._lines + 1 if self._lines else None
            raise _gzip_error(err, self.path, line) from None
        self._lines += bool(raw)
        return raw

    def read(self, size: int = -1) -> bytes:
        """The next ``size`` bytes (decompressed), or all the rest."""
        try:
            return self._handle.read(size)
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


_BOM = "\ufeff"


#: longest line any reader takes (a text of about 200,000 words)
MAX_LINE_BYTES = 1 << 20


def _bounded_lines(handle: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of ``handle``; one longer than :data:`MAX_LINE_BYTES` comes out cut just
    past the limit, so that the caller can refuse it without reading the rest."""
    readline = getattr(handle, "readline", None)
    if readline is None:
        yield from handle
        return
    while raw := readline(MAX_LINE_BYTES + 1):
        yield raw


def _decode_lines(
    handle: Iterable[bytes], name: str | Path, *, keep_ends: bool = False
) -> Iterator[tuple[int, str]]:
    """Numbered lines without a leading byte order mark; without ``keep_ends`` also without
    the line end (LF or CRLF); with it, CRLF becomes LF. A line longer than
    :data:`MAX_LINE_BYTES` is an error (read in pieces of that size, so memory stays bounded
    on a file without line breaks)."""
    for number, raw in enumerate(_bounded_lines(handle), 1):
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):  # cut: longer still
            raise NlpseqError(f"line is longer than {MAX_LINE_BYTES:,} bytes (the most nlpseq "
                              "reads as one line); split it", name, number)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise NlpseqError(
                f"invalid UTF-8 (byte {err.start} of the line)", name, number
            ) from None
        if number == 1 and line.startswith(_BOM):
            line = line[1:]
        stripped = line.rstrip("\r\n")
        yield number, (stripped + "\n" if keep_ends and stripped != line else stripped)


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
    """A whole text file (``.gz`` allowed) as one string, line ends as LF."""
    return "".join(iter_text(path))


#: bytes :func:`iter_text` reads at a time
TEXT_BLOCK = 1 << 20


def iter_text(path: str | Path) -> Iterator[str]:
    """:func:`read_text` in pieces of whole lines, each from about :data:`TEXT_BLOCK` bytes
    (a piece holds at least one line, so a file without line breaks comes as one piece).
    Invalid UTF-8 is an error naming its line, raised when the reading reaches it."""
    path = _check_file(path)
    pending, rest, lines, started, seen = b"", [], 0, False, False
    with _RawBytes(path) as handle:
        while True:
            data = handle.read(TEXT_BLOCK)
            raw, pending = _utf8_prefix(pending + data, path, lines, final=not data)
            lines += raw.count(b"\n")
            new = raw.decode("utf-8")
            if not started and new:  # the file's first characters
                new, started = new.removeprefix(_BOM), True
            end = len(new) if not data else new.rfind("\n") + 1
            if end == 0 and data:  # no line end yet: the piece goes on
                rest.append(new)
                continue
            piece = ("".join(rest) + new[:end]).replace("\r\n", "\n")
            rest = [new[end:]]
            seen = seen or bool(piece.strip())
            if piece:
                yield piece
            if not data:
                break
    if not seen:
        raise NlpseqError("data file is empty", path)


def _utf8_prefix(data: bytes, path: Path, lines_before: int, final: bool
                 ) -> tuple[bytes, bytes]:
    """``data`` split into its valid UTF-8 and the start of a character cut at its end (to be
    completed by the next read); invalid bytes are an error naming their line."""
    try:
        data.decode("utf-8")
        return data, b""
    except UnicodeDecodeError as err:
        cut_at_end = err.reason == "unexpected end of data" and len(data) - err.start < 4
        if cut_at_end and not final:
            return data[: err.start], data[err.start :]
        line = lines_before + data[: err.start].count(b"\n") + 1
        raise NlpseqError("invalid UTF-8", path, line) from None


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
    """Read a TSV/CSV (with a header) or JSONL file of texts and labels.

    TSV has no quoting (one line is one row); CSV quotes as Excel does (a quoted field may span
    lines); JSONL holds one object a line. Blank lines are skipped, values kept as written.
    """
    whole = LabelledData([], [], [], str(path))
    for part in iter_labelled(path, fmt, text_column, label_column,
                              require_labels=require_labels):
        whole.texts += part.texts
        whole.labels += part.labels
        whole.lines += part.lines
        whole.path = part.path  # as the reader names it
    return whole


def iter_labelled(
    path: str | Path,
    fmt: str,
    text_column: str = "text",
    label_column: str = "label",
    *,
    require_labels: bool = True,
    chunk_rows: int | None = None,
) -> Iterator[LabelledData]:
    """:func:`read_labelled` in parts of at most ``chunk_rows`` (default :data:`BLOCK`) rows,
    each read when it is asked for, so memory stays bounded on a file of any length. The
    checks and errors are read_labelled's, raised when the reading reaches them (a JSONL
    file's columns are those of the rows read so far)."""
    path = _check_file(path)
    if fmt not in ("tsv", "csv", "jsonl"):
        raise NlpseqError(f"format {fmt!r} is not a labelled-text format", path)
    wanted = [text_column] + ([label_column] if require_labels else [])
    header: dict[str, Any] = {}  # the row readers fill in "columns" and "line"
    found = False
    with _RawBytes(path) as handle:
        lines = _decode_lines(handle, path, keep_ends=fmt == "csv")
        rows = (_json_rows(lines, path, header) if fmt == "jsonl"
                else _delimited_rows(lines, fmt, path, header))
        while chunk := list(itertools.islice(rows, chunk_rows or BLOCK)):
            if not found:
                _check_columns(header, wanted, path)
                found = True
            yield _labelled(chunk, text_column, label_column, require_labels, path)
    if "line" not in header:
        raise NlpseqError("data file is empty", path)
    _check_columns(header, wanted, path)
    if not found:
        raise NlpseqError("data file has no rows", path)


def _check_columns(header: dict[str, Any], wanted: list[str], path: Path) -> None:
    for column in wanted:
        if column not in header.get("columns", ()):
            raise NlpseqError(f"no column {column!r} (columns: {', '.join(header['columns'])})",
                              path, header["line"])


def _labelled(rows: Rows, text_column: str, label_column: str, require_labels: bool,
              path: Path) -> LabelledData:
    texts: list[str] = []
    labels: list[str | None] = []
    for line, row in rows:
        text, label = _value(row.get(text_column)), _value(row.get(label_column))
        label = label.strip() if label is not None else None  # "pos " is the label pos
        if text is None:
            raise NlpseqError(f"row has no value in column {text_column!r}", path, line)
        if require_labels and label is None:
            raise NlpseqError(f"row has no value in column {label_column!r}", path, line)
        texts.append(text)
        labels.append(label)
    return LabelledData(texts, labels, [line for line, _ in rows], str(path))


def _value(value: object) -> str | None:
    """A field as a string; None where it is missing (JSON null, an empty or blank field)."""
    text = None if value is None else str(value)
    return text if text and text.strip() else None


Rows = list[tuple[int, dict]]


def _json_rows(
    lines: Iterator[tuple[int, str]], path: Path, header: dict[str, Any]
) -> Iterator[tuple[int, dict]]:
    """JSONL lines -> numbered rows; ``header`` gets the keys in order of first appearance
    ("columns") and the first row's line ("line")."""
    columns: dict[str, None] = {}
    header["columns"] = []
    for number, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise NlpseqError(f"invalid JSON: {err.msg} (column {err.colno})", path,
                              number) from None
        if not isinstance(row, dict):
            raise NlpseqError("line is not a JSON object", path, number)
        if any(key not in columns for key in row):
            columns.update(dict.fromkeys(row))
            header["columns"] = list(columns)
        header.setdefault("line", number)
        yield number, row


def _delimited_rows(
    lines: Iterator[tuple[int, str]], fmt: str, path: Path, header: dict[str, Any]
) -> Iterator[tuple[int, dict]]:
    """TSV/CSV lines -> numbered rows as header -> field; ``header`` gets the header
    ("columns") and its line ("line"). A row whose field count differs from the header's is
    an error here, before it could shift a text into the label column."""
    names: list[str] | None = None
    for start, fields in _split_rows(lines, fmt, path):
        if names is None:
            if "".join(fields).strip():  # a file of blank lines is empty, not headed by one
                names = [name.strip() for name in fields]
                header.update(columns=names, line=start)
        elif len(fields) != len(names):
            raise NlpseqError(
                f"row has {len(fields)} {fmt.upper()} fields, the header has {len(names)}",
                path, start,
            )
        else:
            yield start, dict(zip(names, fields))


def _is_quoted(field: str) -> bool:
    return len(field) >= 2 and field[0] == field[-1] == '"'


def _unquote(field: str, path: Path, line: int) -> str:
    """A TSV field of a quoted file without its quotes, doubled quotes inside made single."""
    inner = field[1:-1] if _is_quoted(field) else field
    if _is_quoted(field) and inner.replace('""', "").count('"'):
        raise NlpseqError(f"field {field[:30]!r} has a lone quote inside; quotes within a "
                          "quoted TSV field are doubled", path, line)
    return inner.replace('""', '"') if _is_quoted(field) else field


def _split_rows(
    lines: Iterator[tuple[int, str]], fmt: str, path: Path
) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows of a TSV (split on tabs) or CSV file, with the line each starts on."""
    if fmt == "tsv":
        quoted = None  # decided by the first row: every field quoted, as spreadsheets export
        for number, line in lines:
            if line:
                fields = line.split("\t")
                if quoted is None:
                    quoted = all(_is_quoted(f) for f in fields)
                yield number, [_unquote(f, path, number) for f in fields] if quoted else fields
        return
    numbers = [0]  # the line the csv module last took

    def text() -> Iterator[str]:
        for numbers[0], line in lines:
            yield line

    previous = csv.field_size_limit(sys.maxsize if sys.maxsize < 2**63 else 2**63 - 1)
    try:
        reader = csv.reader(text(), strict=True)
        start = 1
        for row in reader:
            if row:
                yield start, row
            start = numbers[0] + 1
    except csv.Error as err:
        raise NlpseqError(f"cannot parse CSV: {err}", path, numbers[0]) from None
    finally:
        csv.field_size_limit(previous)


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
        return datasets.load_dataset(name, config or None, split=split,
                                     **no_remote_code(datasets.load_dataset))
    except Exception as err:
        raise NlpseqError(f"hub dataset {name!r}: {str(err).splitlines()[0]}") from None


def no_remote_code(load_dataset: Callable[..., object]) -> dict[str, bool]:
    """``trust_remote_code=False`` where ``load_dataset`` takes it: datasets before 4.0 can run
    a dataset's own loading script; later versions run none and no longer take the option."""
    import inspect

    parameters = inspect.signature(load_dataset).parameters
    return {"trust_remote_code": False} if "trust_remote_code" in parameters else {}


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
    return next(iter_parallel(source, target, block=sys.maxsize))


def iter_parallel(source: str | Path, target: str | Path, block: int | None = None
                  ) -> Iterator[ParallelData]:
    """:func:`read_parallel` a part of ``block`` pairs (default :data:`BLOCK`) at a time: both
    files are read together, and a difference in length is found when the shorter one ends
    (after the parts before it were yielded)."""
    block = block or BLOCK
    sources, targets = read_lines(source), read_lines(target)

    def empty() -> ParallelData:
        return ParallelData([], [], [], str(source), str(target))

    part, count = empty(), 0
    for src, tgt in itertools.zip_longest(sources, targets):
        if src is None or tgt is None:
            n_source = count + (src is not None) + sum(1 for _ in sources)
            n_target = count + (tgt is not None) + sum(1 for _ in targets)
            raise NlpseqError(
                f"parallel files differ in length: {source} has {n_source} lines, "
                f"{target} has {n_target} lines"
            )
        count += 1
        part.sources.append(src[1].strip())
        part.targets.append(tgt[1].strip())
        part.lines.append(src[0])
        if len(part.lines) == block:
            yield part
            part = empty()
    if count == 0:
        raise NlpseqError("data file is empty", source)
    if part.lines:
        yield part


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


def iter_conll(
    lines: Iterable[tuple[int, str]],
    path: str | Path,
    tag_column: int = -1,
    scheme: str | None = None,
    *,
    require_tags: bool = True,
    block_lines: int | None = None,
) -> Iterator[TaggedData]:
    """:func:`parse_conll` a block of at least ``block_lines`` (default :data:`BLOCK`) lines
    at a time (a block ends at a blank line, between sentences), each parsed when it is asked
    for, so memory stays bounded on input of any length. Column counts are checked within
    each block; input with no sentence at all is the "no sentences" error."""
    block: list[tuple[int, str]] = []
    found = False
    for number, line in lines:
        block.append((number, line))
        if len(block) >= (block_lines or BLOCK) and not line.strip():
            if _has_tokens(block):
                yield parse_conll(block, path, tag_column, scheme, require_tags=require_tags)
                found = True
            block = []
    if not found or _has_tokens(block):
        yield parse_conll(block, path, tag_column, scheme, require_tags=require_tags)


def _has_tokens(block: list[tuple[int, str]]) -> bool:
    return any(line.split()[:1] not in ([], ["-DOCSTART-"]) for _, line in block)


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


def looks_like_conll(head: list[str], tag_column: int, scheme: str) -> bool:
    """CoNLL when the input starts with ``-DOCSTART-``, or its first sentence is one token a
    line with a tag column, or it is one token a line with blank lines between sentences.
    ``head``: the input's first lines (200 are plenty)."""
    from nlpseq.tagschemes import validate_tag

    block = []
    for line in head:
        if not line.strip():
            if block:
                break
            continue
        block.append(line.split())
    if not block:
        return False
    if block[0][0] == "-DOCSTART-":
        return True
    widths = {len(fields) for fields in block}
    if widths == {1}:
        return len(block) < len([line for line in head if line.strip()])
    if len(widths) != 1 or len(block) < 2:
        return False
    width = widths.pop()
    column = tag_column if tag_column >= 0 else width + tag_column
    if not 1 <= column < width:
        return False
    try:
        for fields in block:
            validate_tag(fields[column], scheme)
    except ValueError:
        return False
    return True
