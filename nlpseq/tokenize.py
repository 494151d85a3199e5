"""Tokenize stage: one Hugging Face ``tokenizers.Tokenizer`` for training and inference.

Three models: word-level (whitespace-split, optional lowercasing and digit normalisation),
BPE (Metaspace, so decoding restores the text) and character-level. Special tokens have fixed
ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3. Everything, truncation included, is
saved in ``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from nlpseq.config import TokenizerConfig
from nlpseq.errors import NlpseqError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
PTB_BRACKETS = {"lrb": "(", "rrb": ")", "lsb": "[", "rsb": "]", "lcb": "{", "rcb": "}"}


def _normalizer(config: TokenizerConfig) -> normalizers.Normalizer | None:
    steps = []
    if config.lowercase:
        steps.append(normalizers.Lowercase())
    if config.normalize_digits:
        steps.append(normalizers.Replace(Regex(r"\d"), "0"))
    if config.ptb_brackets and config.kind == "word":
        for escape, bracket in PTB_BRACKETS.items():
            steps.append(normalizers.Replace(Regex(f"(?i)(?<!\\S)-{escape}-(?!\\S)"), bracket))
    return normalizers.Sequence(steps) if steps else None


class TextTokenizer:
    """Text <-> ids. Build with :meth:`train` or :meth:`load`."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        for token_id, token in enumerate(SPECIALS):
            if tokenizer.token_to_id(token) != token_id:
                raise ValueError(f"tokenizer must map {token} to id {token_id}")

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
                tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
                tokenizer.decoder = decoders.Fuse()
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
        """Encode many texts (parallel, in Rust)."""
        # encode_batch_fast skips character offsets, which nlpseq never uses.
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts)]

    def encode_words(self, sentences: list[list[str]]) -> list[list[int]]:
        """Encode already-split sentences: exactly one id per word (word-level tokenizers)."""
        encoded = self.tokenizer.encode_batch(sentences, is_pretokenized=True)
        return [e.ids for e in encoded]

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
