"""Tokenize stage: one Hugging Face ``tokenizers.Tokenizer`` for training and inference.

Three models: word-level (whitespace-split, optionally also at punctuation; optional
lowercasing, digit normalisation and HTML tag removal),
BPE (Metaspace, so decoding restores the text) and character-level. Special tokens have fixed
ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3. Everything, truncation included, is
saved in ``tokenizer.json``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from nlpseq.config import TokenizerConfig
from nlpseq.errors import NlpseqError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
CHAR_SPLIT = r"[\s\S]"  # the char kind's pre-tokenizer: every character one piece
PTB_BRACKETS = {"lrb": "(", "rrb": ")", "lsb": "[", "rsb": "]", "lcb": "{", "rcb": "}"}


# A whole whitespace-delimited escape, any case -> its bracket.
_PTB_PATTERNS = {
    f"(?i)(?<!\\S)-{escape}-(?!\\S)": bracket for escape, bracket in PTB_BRACKETS.items()
}


#: An HTML tag such as ``<br />``, ``<i>`` or ``</a href=...>`` (not ``a < b`` or ``<3``).
HTML_TAG = r"</?[A-Za-z][^<>]{0,200}>"


def _normalizer(config: TokenizerConfig) -> normalizers.Normalizer | None:
    steps = []
    if config.strip_html and config.kind == "word":
        steps.append(normalizers.Replace(Regex(HTML_TAG), " "))
    if config.lowercase:
        steps.append(normalizers.Lowercase())
    if config.normalize_digits:
        steps.append(normalizers.Replace(Regex(r"\d"), "0"))
    if config.ptb_brackets and config.kind == "word":
        for pattern, bracket in _PTB_PATTERNS.items():
            steps.append(normalizers.Replace(Regex(pattern), bracket))
    return normalizers.Sequence(steps) if steps else None


class _WordLevelPlan:
    """A word-level tokenizer's encoding done in Python, with identical ids.

    For short texts the Rust tokenizer spends most of its time building alignment-tracking
    strings and ``Encoding`` objects (about 20 µs per SST-2 sentence); lowercasing, splitting
    and a dict lookup take a few. Built only for the exact pipelines :meth:`TextTokenizer.train`
    writes for ``kind: word`` (lowercase, digits, PTB brackets, whitespace split, WordLevel,
    right truncation); a text that holds a special token's string or one of the four control
    characters Python splits on and Rust does not goes through the Rust tokenizer instead.
    """

    PTB = {f"-{escape}-": bracket for escape, bracket in PTB_BRACKETS.items()}
    DIGIT = re.compile(r"\d")
    SUSPECT = re.compile("[<\x1c-\x1f]")  # a cheap first test before ROUTE_TO_RUST
    ROUTE_TO_RUST = re.compile("|".join(map(re.escape, SPECIALS)) + "|[\x1c-\x1f]")

    def __init__(self, spec: dict, vocab: dict[str, int]):
        self.vocab = vocab
        steps = spec["normalizer"] or {"type": "Sequence", "normalizers": []}
        steps = steps["normalizers"] if steps["type"] == "Sequence" else [steps]
        kinds = [self._kind(step) for step in steps]
        if None in kinds or kinds != sorted(kinds, key=["lower", "digits", "ptb"].index):
            raise ValueError("normalizers nlpseq does not write")
        self.lower = "lower" in kinds
        self.digits = "digits" in kinds
        self.ptb = kinds.count("ptb") == len(PTB_BRACKETS)
        if kinds.count("ptb") not in (0, len(PTB_BRACKETS)):
            raise ValueError("partial PTB normalizers")
        truncation = spec["truncation"]
        if truncation and (truncation["direction"] != "Right" or truncation["stride"]):
            raise ValueError("truncation nlpseq does not write")
        self.max_length = truncation["max_length"] if truncation else 0

    @staticmethod
    def _kind(step: dict) -> str | None:
        if step["type"] == "Lowercase":
            return "lower"
        if step["type"] != "Replace":
            return None
        pattern = step["pattern"].get("Regex")
        if pattern == r"\d" and step["content"] == "0":
            return "digits"
        return "ptb" if _PTB_PATTERNS.get(pattern) == step["content"] else None

    @classmethod
    def of(cls, spec: dict, tokenizer: Tokenizer) -> _WordLevelPlan | None:
        """The plan for ``tokenizer`` (``spec``: its JSON, parsed), or None where it is not
        one nlpseq's word kind writes."""
        try:
            if (spec["model"]["type"] != "WordLevel" or spec["post_processor"] is not None
                    or spec["pre_tokenizer"] != {"type": "WhitespaceSplit"}
                    or [t["content"] for t in spec["added_tokens"]] != SPECIALS):
                return None
            return cls(spec, tokenizer.get_vocab())
        except (KeyError, TypeError, ValueError):
            return None

    def encode(self, text: str) -> list[int] | None:
        """Ids of ``text``, or None where the Rust tokenizer must do it."""
        if self.SUSPECT.search(text) and self.ROUTE_TO_RUST.search(text):
            return None
        if self.lower:
            # Rust lowercases char by char; Python's one context rule, final sigma, is avoided
            text = text.replace("\u03a3", "\u03c3").lower()
        if self.digits:
            text = self.DIGIT.sub("0", text)
        words = text.split()
        if self.ptb and "-" in text:
            words = [self.PTB.get(w.lower(), w) if w[0] == "-" else w for w in words]
        get = self.vocab.get
        ids = [get(w, UNK) for w in words]
        return ids[: self.max_length] if self.max_length else ids


class _CharLevelPlan:
    """A character tokenizer's encoding (every character one token, no normaliser) done in
    Python, with identical ids: a dict lookup a character against the Rust tokenizer's
    per-text setup, several times faster on words. A text holding a special token's string
    goes through the Rust tokenizer, which reads it as one token."""

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    @classmethod
    def of(cls, spec: dict, tokenizer: Tokenizer) -> _CharLevelPlan | None:
        """The plan for ``tokenizer`` (``spec``: its JSON, parsed), or None where it is not
        one nlpseq's char kind writes."""
        split = {"type": "Split", "pattern": {"Regex": CHAR_SPLIT}, "behavior": "Isolated",
                 "invert": False}
        if (spec["model"]["type"] != "WordLevel" or spec["normalizer"] is not None
                or spec["post_processor"] is not None or spec["truncation"] is not None
                or spec["pre_tokenizer"] != split
                or [t["content"] for t in spec["added_tokens"]] != SPECIALS):
            return None
        return cls(tokenizer.get_vocab())

    def encode(self, text: str) -> list[int] | None:
        """Ids of ``text``, or None where the Rust tokenizer must do it."""
        if "<" in text and _WordLevelPlan.ROUTE_TO_RUST.search(text):
            return None
        get = self.vocab.get
        return [get(c, UNK) for c in text]


class TextTokenizer:
    """Text <-> ids. Build with :meth:`train` or :meth:`load`."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        for token_id, token in enumerate(SPECIALS):
            if tokenizer.token_to_id(token) != token_id:
                raise ValueError(f"tokenizer must map {token} to id {token_id}")

    @functools.cached_property
    def _plan(self) -> _WordLevelPlan | _CharLevelPlan | None:
        # Built on first batch encoding, not at load: it serialises the whole vocabulary.
        spec = json.loads(self.tokenizer.to_str())
        return _WordLevelPlan.of(spec, self.tokenizer) or _CharLevelPlan.of(spec, self.tokenizer)

    @classmethod
    def train(cls, texts: Iterable[str], config: TokenizerConfig) -> TextTokenizer:
        """Fit the tokenizer of ``config.kind`` on training texts."""
        size = config.max_size + len(SPECIALS)
        if config.kind == "bpe":
            tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
            tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
            tokenizer.decoder = decoders.Metaspace()
            trainer = trainers.BpeTrainer(
                vocab_size=size, min_frequency=config.min_frequency, special_tokens=SPECIALS,
                show_progress=False,
            )
        else:
            tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
            if config.kind == "char":
                # Every character, whitespace and newlines included, is a token.
                tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_SPLIT), "isolated")
                tokenizer.decoder = decoders.Fuse()
            elif config.split_punctuation:
                # "it's great!" -> it ' s great ! (each punctuation character a word)
                tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                    [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
            else:
                tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
            trainer = trainers.WordLevelTrainer(
                vocab_size=size, min_frequency=config.min_frequency, special_tokens=SPECIALS,
                show_progress=False,
            )
        normalizer = _normalizer(config)
        if normalizer is not None:
            tokenizer.normalizer = normalizer
        tokenizer.train_from_iterator(texts, trainer)
        if config.max_length > 0:
            tokenizer.enable_truncation(config.max_length)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Read ``tokenizer.json``."""
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises plain Exception subclasses
            raise NlpseqError(f"cannot read tokenizer: {err}", path) from None

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def vocabulary(self) -> list[str]:
        """Tokens in id order."""
        vocab = self.tokenizer.get_vocab()
        out = [""] * len(vocab)
        for token, index in vocab.items():
            out[index] = token
        return out

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts: word-level ones in Python (see :class:`_WordLevelPlan`: same
        ids, several times faster on short texts), others in parallel in Rust."""
        if self._plan is None:
            # encode_batch_fast skips character offsets, which nlpseq never uses.
            return [e.ids for e in self.tokenizer.encode_batch_fast(texts)]
        encoded = [self._plan.encode(text) for text in texts]
        rest = [i for i, ids in enumerate(encoded) if ids is None]
        if rest:
            for i, e in zip(rest, self.tokenizer.encode_batch_fast([texts[i] for i in rest])):
                encoded[i] = e.ids
        return encoded  # type: ignore[return-value]

    def encode_words(self, words: list[str]) -> list[int]:
        """Exactly one id per word (word-level tokenizers): a word the tokenizer would not
        read as one token (empty, or holding whitespace, as a caller's ``"New York"`` may)
        is ``<unk>``, so ids stay aligned with words."""
        return [ids[0] if len(ids) == 1 else UNK for ids in self.encode_batch(words)]

    def extended(self, words: list[str]) -> TextTokenizer:
        """A copy of this word-level tokenizer whose vocabulary ends with ``words`` (those not
        already in it, in order); existing ids are unchanged."""
        if not isinstance(self.tokenizer.model, models.WordLevel):
            raise ValueError("only word-level vocabularies can be extended")
        vocab = self.tokenizer.get_vocab()
        for word in words:
            if word not in vocab:
                vocab[word] = len(vocab)
        tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        tokenizer.model = models.WordLevel(vocab, unk_token="<unk>")
        return TextTokenizer(tokenizer)

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.encode(text).tokens

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.tokenizer.id_to_token(index)
