"""Corpus readers: files on disk (``.gz`` read transparently) -> examples.

Labelled TSV/CSV/JSONL go through ``datasets`` (Arrow-backed, memory-mapped); every reader
reports bad input as :class:`NlpseqError` with the file and line.
"""

from __future__ import annotations

import gzip
import io
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nlpseq.errors import NlpseqError


def _check_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not str(path) or str(path) == ".":
        raise NlpseqError("no data file given")
    if not path.is_file():
        raise NlpseqError("data file not found", path)
    return path


def _raw_bytes(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def check_utf8(path: str | Path) -> None:
    """Raise NlpseqError naming the line of the first invalid UTF-8 byte (or an empty file)."""
    path = _check_file(path)
    empty = True
    with _raw_bytes(path) as handle:
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


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` without the newline; invalid UTF-8 is an error."""
    path = _check_file(path)
    with _raw_bytes(path) as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise NlpseqError(
                    f"invalid UTF-8 (byte {err.start} of the line)", path, number
                ) from None
            yield number, line.rstrip("\r\n")


def read_text(path: str | Path) -> str:
    """A whole text file (``.gz`` allowed) as one string."""
    path = _check_file(path)
    with _raw_bytes(path) as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise NlpseqError("invalid UTF-8", path, line) from None
    if not text.strip():
        raise NlpseqError("data file is empty", path)
    return text


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
    datasets.logging.set_verbosity_error()
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
    try:
        data = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # pandas/arrow parse errors carry their own line numbers
        raise NlpseqError(f"cannot parse {fmt.upper()}: {str(err).splitlines()[0]}", path) from None
    if text_column not in data.column_names:
        raise NlpseqError(
            f"no column {text_column!r} (columns: {', '.join(data.column_names)})", path, 1
        )
    has_labels = label_column in data.column_names
    if require_labels and not has_labels:
        raise NlpseqError(
            f"no column {label_column!r} (columns: {', '.join(data.column_names)})", path, 1
        )
    texts = ["" if t is None else str(t) for t in data[text_column]]
    labels: list[str | None] = [None] * len(texts)
    if has_labels:
        labels = [None if v is None or str(v).strip() == "" else str(v) for v in data[label_column]]
    lines = [first_line + i for i in range(len(texts))]
    if require_labels:
        for line, label in zip(lines, labels):
            if label is None:
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
