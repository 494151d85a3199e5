"""Pretrained word vectors (through gensim) aligned to a tokenizer's vocabulary.

Alignment tries the exact word, then its lowercase form, then its digit-normalised form;
words with no vector keep a small random init. Loading a 400k-word GloVe text file takes
most of a minute, so the aligned matrix is cached under a key made of the file's content hash
and the vocabulary.

Words never seen in training get their pretrained vector one way, for every task: the file's
words join the vocabulary after the trained ids (:func:`extend_vocabulary`), and their rows are
fixed, untrained vectors (:func:`initial_vectors`), stored once in the run directory
(:func:`save_fixed_vectors`) rather than in every weights file. A model embeds id ``i`` with
its trained row when ``i < trained_size`` and with fixed row ``i - trained_size`` otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from nlpseq.checkpoint import atomic_path, write_json
from nlpseq.config import expand_env
from nlpseq.errors import NlpseqError

if TYPE_CHECKING:
    from nlpseq.config import EmbeddingsConfig
    from nlpseq.tokenize import TextTokenizer

_DIGIT = re.compile(r"\d")
FIXED_VECTORS = "vectors.safetensors"  # in a run directory: the fixed rows
SPECIAL_ROWS = 4  # <pad>, <unk>, <bos>, <eos> get no pretrained vector
WORD2VEC_VERSION = 1  # part of the word2vec cache key: raise it when the vectors change


@dataclass
class Coverage:
    """How many vocabulary entries found a pretrained vector, and how."""

    exact: int
    lowercase: int
    digits: int
    missing: int

    @property
    def found(self) -> int:
        return self.exact + self.lowercase + self.digits

    def __str__(self) -> str:
        total = self.found + self.missing
        return (
            f"{self.found}/{total} words ({100 * self.found / max(total, 1):.1f}%) have vectors "
            f"(exact {self.exact}, lowercase {self.lowercase}, digits {self.digits})"
        )


def _locate_bad_row(path: Path, header: bool = False) -> tuple[int, str]:
    """Find the first row whose dimension differs from the first row's (after a load error);
    with a word2vec ``header`` ("count dim"), rows must have the header's dimension."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        first, source = None, "the first row has"
        for number, line in enumerate(handle, 1):
            if header and number == 1:
                fields = line.split()
                if len(fields) == 2 and fields[1].isdigit():
                    first, source = int(fields[1]), "the header says"
                continue
            fields = line.rstrip().split(" ")
            width = len(fields) - 1
            for value in fields[1:]:
                try:
                    float(value)
                except ValueError:
                    return number, f"{value[:20]!r} is not a number"
            if first is None:
                first = width
            elif width != first:
                return number, f"row has {width} values, {source} {first}"
    return 0, "cannot parse the vectors"


#: environment variable that must be 1 before gensim-data models are downloaded
GENSIM_DATA_OPT_IN = "NLPSEQ_ALLOW_GENSIM_DATA"


def load_vectors(path: str, fmt: str):
    """Load gensim ``KeyedVectors`` (GloVe/word2vec text or binary, fastText ``.bin``)."""
    from gensim.models import KeyedVectors  # heavy: only when embeddings are used

    if fmt == "gensim-data":
        import socket

        # gensim's downloader imports the Python module that comes with each model
        if os.environ.get(GENSIM_DATA_OPT_IN) != "1":
            raise NlpseqError(
                f"embeddings.format gensim-data downloads {path!r} and runs the Python code "
                f"that comes with it; set {GENSIM_DATA_OPT_IN}=1 to allow that, or give "
                "embeddings.path a local vectors file"
            )

        try:
            socket.create_connection(("github.com", 443), timeout=5).close()
        except OSError:
            raise NlpseqError(
                f"cannot download gensim-data vectors {path!r} (offline?); "
                "give embeddings.path a local file instead"
            ) from None
        import gensim.downloader

        return gensim.downloader.load(path)
    file = Path(path).expanduser()
    if not file.is_file():
        raise NlpseqError("embeddings file not found", file)
    try:
        if fmt == "fasttext":
            from gensim.models.fasttext import load_facebook_vectors

            return _finite(load_facebook_vectors(str(file)), file, fmt)
        return _finite(KeyedVectors.load_word2vec_format(
            str(file), binary=fmt == "word2vec-binary", no_header=fmt == "glove"
        ), file, fmt)
    except UnicodeDecodeError:
        raise NlpseqError("embeddings file is not valid UTF-8", file) from None
    except NlpseqError:
        raise
    except Exception as err:  # gensim's parsers raise many types on malformed files
        if file.stat().st_size == 0:
            raise NlpseqError("embeddings file is empty", file) from None
        if fmt in ("glove", "word2vec"):
            try:
                line, problem = _locate_bad_row(file, header=fmt == "word2vec")
            except (OSError, EOFError, zlib.error):  # damaged gzip data
                line, problem = 0, "the gzip data is damaged or ends early"
            raise NlpseqError(f"bad embeddings row: {problem}", file, line or None) from None
        problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NlpseqError(f"cannot read embeddings: {problem}", file) from None


def _finite(vectors, file: Path, fmt: str):
    """``vectors``, unless a row holds NaN or an infinity (which would turn every loss that
    touches the word into NaN): then an error naming the word and, in text files, its line."""
    finite = np.isfinite(vectors.vectors).all(axis=1)
    if finite.all():
        return vectors
    word = vectors.index_to_key[int(np.argmin(finite))]
    line = None
    if fmt in ("glove", "word2vec"):
        with open(file, encoding="utf-8", errors="replace") as handle:
            line = next((n for n, row in enumerate(handle, 1)
                         if row.split(" ", 1)[0] == word and n > (fmt == "word2vec")), None)
    raise NlpseqError(f"the vector of {word[:40]!r} holds NaN or an infinity", file, line)


def align(
    vocabulary: list[str], vectors, dim: int, *, seed: int = 0, skip: int = 0
) -> tuple[np.ndarray, Coverage]:
    """Matrix (V, dim): row i holds the vector of ``vocabulary[i]`` (first ``skip`` rows zero).

    Rows without a vector are drawn from N(0, std of the found vectors); fastText vectors
    supply subword vectors for any word, which count as exact.
    """
    if vectors.vector_size != dim:
        raise NlpseqError(
            f"embeddings have dimension {vectors.vector_size}, model.embedding_dim is {dim}"
        )
    rng = np.random.default_rng(seed)
    matrix = np.zeros((len(vocabulary), dim), dtype=np.float32)
    counts = {"exact": 0, "lowercase": 0, "digits": 0}
    missing = []
    subword = hasattr(vectors, "get_vector") and hasattr(vectors, "buckets_word")
    for index, word in enumerate(vocabulary[skip:], skip):
        for kind, candidate in (
            ("exact", word),
            ("lowercase", word.lower()),
            ("digits", _DIGIT.sub("0", word.lower())),
        ):
            if candidate in vectors.key_to_index:
                matrix[index] = vectors[candidate]
                counts[kind] += 1
                break
        else:
            if subword:
                matrix[index] = vectors[word]
                counts["exact"] += 1
            else:
                missing.append(index)
    found = matrix[skip:][np.any(matrix[skip:] != 0, axis=1)]
    std = float(found.std()) if found.size else 0.1
    if missing:
        matrix[missing] = rng.normal(0.0, std, size=(len(missing), dim)).astype(np.float32)
    return matrix, Coverage(**counts, missing=len(missing))


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    """Content hash of a file (memoised per path, size and modification time)."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime)


def _cache_folder(cache_dir: str) -> Path:
    """``cache_dir`` with ``${VAR:-default}`` and ``~`` expanded: a config built in Python
    keeps its default unexpanded, and it must not become a folder named ``${NLPSEQ_CACHE...``."""
    return Path(expand_env(cache_dir)).expanduser()


def pretrained_words(path: str, fmt: str, *, cache_dir: str = "", limit: int = 0) -> list[str]:
    """The words of an embeddings file in file order (GloVe and word2vec files are sorted by
    frequency), at most ``limit``; the word list is cached by the file's content hash."""
    cache_file = None
    if cache_dir and fmt != "gensim-data":
        file = Path(path).expanduser()
        if not file.is_file():
            raise NlpseqError("embeddings file not found", file)
        cache_file = _cache_folder(cache_dir) / f"words-{_file_digest(file)[:24]}.txt"
        if cache_file.is_file():
            words = cache_file.read_text(encoding="utf-8").split("\n")
            return words[:limit] if limit else words
    words = list(load_vectors(path, fmt).index_to_key)
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            Path(tmp).write_text("\n".join(words), encoding="utf-8")
    return words[:limit] if limit else words


def pretrained_matrix(
    path: str,
    fmt: str,
    vocabulary: list[str],
    dim: int,
    *,
    cache_dir: str = "",
    seed: int = 0,
    skip: int = 0,
) -> tuple[torch.Tensor, Coverage]:
    """Aligned embedding matrix for ``vocabulary``, from the cache when the same file and
    vocabulary were aligned before. Coverage is reported on stderr."""
    from safetensors.numpy import load_file, save_file

    cache_file = None
    if cache_dir and fmt != "gensim-data":
        file = Path(path).expanduser()
        if not file.is_file():
            raise NlpseqError("embeddings file not found", file)
        key = hashlib.sha256(
            "\n".join([_file_digest(file), fmt, str(dim), str(seed), str(skip), *vocabulary])
            .encode("utf-8")
        ).hexdigest()[:24]
        cache_file = _cache_folder(cache_dir) / f"embeddings-{key}.safetensors"
        if cache_file.is_file():
            stored = load_file(str(cache_file))
            with open(cache_file.with_suffix(".json"), encoding="utf-8") as handle:
                coverage = Coverage(**json.load(handle))
            print(f"embeddings: {coverage} (cached)", file=sys.stderr)
            return torch.from_numpy(stored["matrix"]), coverage
    vectors = load_vectors(path, fmt)
    try:
        matrix, coverage = align(vocabulary, vectors, dim, seed=seed, skip=skip)
    except NlpseqError as err:  # align knows the vectors, not the file they came from
        raise NlpseqError(err.message, path) from None
    print(f"embeddings: {coverage}", file=sys.stderr)
    if cache_file is not None:
        write_json(cache_file.with_suffix(".json"), coverage.__dict__)
        with atomic_path(cache_file) as tmp:
            save_file({"matrix": matrix}, tmp)
    return torch.from_numpy(matrix), coverage


def extend_vocabulary(
    tokenizer: TextTokenizer, config: EmbeddingsConfig, words: int
) -> tuple[TextTokenizer, int]:
    """``tokenizer`` with the first ``words`` words of the embeddings file (all of them for a
    negative count; GloVe and word2vec files list the most frequent first) appended to its
    vocabulary, and the number of trained ids before them. Unchanged for 0 or no file."""
    trained_size = tokenizer.vocab_size
    if words == 0 or not config.path:
        return tokenizer, trained_size
    found = pretrained_words(config.path, config.format, cache_dir=config.cache_dir,
                             limit=max(words, 0))
    return tokenizer.extended(found), trained_size


def initial_vectors(
    config: EmbeddingsConfig, vocabulary: list[str], trained_size: int, dim: int, seed: int,
    texts: Callable[[], Iterable[Sequence[int]]] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(trained, fixed)``: the initial rows ``(trained_size, dim)`` of the trained table and
    the fixed rows ``(len(vocabulary) - trained_size, dim)`` (None when there are none), both
    aligned from one (cached) :func:`pretrained_matrix`, followed in each row by the
    :func:`word2vec_matrix` vectors trained on ``texts()`` (token ids of ``vocabulary``) when
    ``config.word2vec_dim`` is set. ``(None, None)`` with neither."""
    parts = []
    if config.path:
        own = dim - config.word2vec_dim
        if own < 1:
            raise NlpseqError(f"model.embedding_dim {dim} leaves no room for the vectors of "
                              f"embeddings.path beside embeddings.word2vec_dim "
                              f"{config.word2vec_dim}")
        matrix, _ = pretrained_matrix(config.path, config.format, vocabulary, own,
                                      cache_dir=config.cache_dir, seed=seed, skip=SPECIAL_ROWS)
        parts.append(matrix)
    if config.word2vec_dim:
        if not config.path and dim != config.word2vec_dim:
            raise NlpseqError(f"model.embedding_dim is {dim}, embeddings.word2vec_dim "
                              f"{config.word2vec_dim}: without embeddings.path they must agree")
        if texts is None:
            raise NlpseqError("embeddings.word2vec_dim: this task gives word2vec no texts")
        parts.append(word2vec_matrix(texts, len(vocabulary), config, seed=seed))
    if not parts:
        return None, None
    matrix = torch.cat(parts, dim=1)
    fixed = matrix[trained_size:]
    return matrix[:trained_size].contiguous(), fixed.contiguous() if len(fixed) else None


def word2vec_matrix(
    texts: Callable[[], Iterable[Sequence[int]]], vocab_size: int, config: EmbeddingsConfig,
    *, seed: int = 0,
) -> torch.Tensor:
    """Matrix (vocab_size, config.word2vec_dim) of word2vec (CBOW, window 5) vectors trained
    on ``texts()``, sequences of token ids: row i holds id i's vector. Specials and ids seen
    fewer than ``word2vec_min_count`` times get zeros, not random values: words outside the
    training vocabulary keep their rows fixed, and noise there would never be unlearnt. One
    worker thread, so that a seed gives the same vectors every time; the matrix is cached
    under a hash of the ids and the settings."""
    from safetensors.numpy import load_file, save_file

    digest = hashlib.sha256()
    sentences = []
    for ids in texts():
        row = np.asarray(ids, dtype=np.int32)
        digest.update(len(row).to_bytes(4, "little"))
        digest.update(row.tobytes())
        sentences.append(row)
    settings = (WORD2VEC_VERSION, config.word2vec_dim, config.word2vec_epochs,
                config.word2vec_min_count, seed, vocab_size)
    digest.update(repr(settings).encode("utf-8"))
    cache_file = (_cache_folder(config.cache_dir) / f"word2vec-{digest.hexdigest()[:24]}"
                  ".safetensors") if config.cache_dir else None
    if cache_file is not None and cache_file.is_file():
        print("word2vec: vectors (cached)", file=sys.stderr)
        return torch.from_numpy(load_file(str(cache_file))["matrix"])
    matrix = _train_word2vec(sentences, vocab_size, config, seed)
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            save_file({"matrix": matrix}, tmp)
    return torch.from_numpy(matrix)


def _train_word2vec(sentences: list[np.ndarray], vocab_size: int, config: EmbeddingsConfig,
                    seed: int) -> np.ndarray:
    from gensim.models import Word2Vec

    names = [str(i) for i in range(vocab_size)]  # gensim wants strings; one object per id
    counts = np.bincount(np.concatenate([*sentences, np.zeros(0, np.int32)]),
                         minlength=vocab_size)[SPECIAL_ROWS:]
    tokens = int(counts.sum())
    if not (counts >= config.word2vec_min_count).any():
        raise NlpseqError(f"embeddings.word2vec_dim: no word of the texts occurs "
                          f"embeddings.word2vec_min_count ({config.word2vec_min_count}) times "
                          f"({tokens:,} words in all)")
    corpus = [[names[i] for i in row.tolist() if i >= SPECIAL_ROWS] for row in sentences]
    model = Word2Vec(corpus, vector_size=config.word2vec_dim, window=5,
                     min_count=config.word2vec_min_count, workers=1, seed=seed,
                     epochs=config.word2vec_epochs)
    matrix = np.zeros((vocab_size, config.word2vec_dim), dtype=np.float32)
    found = np.array([int(word) for word in model.wv.index_to_key], dtype=np.int64)
    matrix[found] = model.wv.vectors
    print(f"word2vec: {len(found)}/{vocab_size - SPECIAL_ROWS} words from {tokens:,} tokens",
          file=sys.stderr)
    return matrix


def save_fixed_vectors(directory: Path, fixed: torch.Tensor | None) -> None:
    """Write the fixed rows into a run directory (nothing when there are none)."""
    from safetensors.torch import save_file

    if fixed is not None:
        with atomic_path(Path(directory) / FIXED_VECTORS) as tmp:
            save_file({"fixed": fixed.detach().contiguous().cpu()}, tmp)


def load_fixed_vectors(directory: Path, vocab_size: int) -> tuple[torch.Tensor | None, int]:
    """The fixed rows :func:`save_fixed_vectors` wrote (or None) and, for a vocabulary of
    ``vocab_size`` ids, the number of trained ids before them."""
    from safetensors.torch import load_file

    path = Path(directory) / FIXED_VECTORS
    if not path.is_file():
        return None, vocab_size
    try:
        fixed = load_file(str(path))["fixed"]
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise NlpseqError(f"cannot read the fixed pretrained vectors: {err}", path) from None
    return fixed, vocab_size - len(fixed)
