"""Translation: line-parallel text -> BPE -> attentional seq2seq -> beam search -> sacreBLEU.

Sources are encoded as ``ids <eos>`` and targets as ``<bos> ids <eos>``; outputs are decoded
back to plain text (the BPE tokenizer's Metaspace decoder restores the spacing) before they
are printed or scored, so BLEU and chrF are sacreBLEU's, on detokenized, cased text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nlpseq.batching import bucket_batches, pad
from nlpseq.checkpoint import save_objects
from nlpseq.corpora import ParallelData, iter_parallel, read_parallel
from nlpseq.decoding import Hypothesis, beam_search, greedy_search, max_target_lengths
from nlpseq.errors import NlpseqError
from nlpseq.metrics import LossCounts, TranslationCounts
from nlpseq.models.seq2seq import Seq2Seq, Seq2SeqConfig, TranslationBatch
from nlpseq.tasks.base import Log, Task, between_parts, shard, text_list
from nlpseq.tokenize import BOS, EOS, PAD, TextTokenizer

TOKENIZER = "tokenizer.json"  # joint vocabulary
SOURCE_TOKENIZER = "source_tokenizer.json"  # separate vocabularies
TARGET_TOKENIZER = "target_tokenizer.json"

# A part of an evaluation corpus: source ids, reference texts, target ids
Part = tuple[list[list[int]], list[str], list[list[int]]]


@dataclass
class Translation:
    """One translation with the tokens and attention weights behind it."""

    text: str
    source_tokens: list[str]  # subwords of the source, then </s>
    target_tokens: list[str]  # subwords of the output, then </s> unless cut at the maximum length
    attention: torch.Tensor  # (len(target_tokens), len(source_tokens)), rows sum to 1


class TranslateTask(Task):
    """Source sentence -> target sentence; model selection by dev BLEU."""

    name = "translate"
    ModelConfig = Seq2SeqConfig
    formats = ("parallel",)
    metrics = {"bleu": True, "chrf": True, "loss": False, "perplexity": False}
    default_metric = "bleu"

    commands = frozenset({"translate"})
    predict_options = ("beam",)
    evaluate_options = ("beam",)

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self.source_tokenizer: TextTokenizer | None = None
        self.target_tokenizer: TextTokenizer | None = None
        self.train_pairs: list[tuple[list[int], list[int]]] = []
        self.dev_sources: list[list[int]] = []
        self.dev_targets: list[list[int]] = []
        self.dev_references: list[str] = []

    @property
    def joint(self) -> bool:
        return self.config.tokenizer.joint

    # --- data ----------------------------------------------------------------------------
    def _read(self, source: str, target: str, split: str) -> ParallelData:
        if not source or not target:
            raise NlpseqError(
                f"translation needs data.{split} and data.{split}_target (source and target "
                "files)", self.config.source or None,
            )
        return read_parallel(source, target)

    def encode_sources(self, texts: list[str]) -> list[list[int]]:
        """Source texts -> ``ids <eos>`` (never empty)."""
        return [ids + [EOS] for ids in self.source_tokenizer.encode_batch(texts)]

    def encode_targets(self, texts: list[str]) -> list[list[int]]:
        """Target texts -> ``<bos> ids <eos>``."""
        return [[BOS, *ids, EOS] for ids in self.target_tokenizer.encode_batch(texts)]

    def prepare(self, log: Log, artifacts: Path | None = None) -> None:
        data = self.config.data
        if self.config.embeddings.path:
            raise NlpseqError(
                "translation does not use pretrained embeddings: remove embeddings.path",
                self.config.source or None,
            )
        train = self._read(data.train, data.train_target, "train")
        if data.limit:
            train = train.select([i < data.limit for i in range(len(train.sources))])
        if artifacts is not None:
            self.load_artifacts(artifacts)
        elif self.joint:
            self.source_tokenizer = TextTokenizer.train(
                train.sources + train.targets, self.config.tokenizer
            )
            self.target_tokenizer = self.source_tokenizer
        else:
            self.source_tokenizer = TextTokenizer.train(train.sources, self.config.tokenizer)
            self.target_tokenizer = TextTokenizer.train(train.targets, self.config.tokenizer)
        sources = self.encode_sources(train.sources)
        targets = self.encode_targets(train.targets)
        empty = too_long = 0
        self.train_pairs = []
        for source, target, src_text, tgt_text in zip(
            sources, targets, train.sources, train.targets
        ):
            if not src_text or not tgt_text:
                empty += 1
            elif (len(source) - 1 > data.max_source_length
                  or len(target) - 2 > data.max_target_length):
                too_long += 1
            else:
                self.train_pairs.append((source, target))
        if not self.train_pairs:
            raise NlpseqError("no training pairs left after dropping empty and long ones",
                              train.source_path)
        vocab = (f"joint vocabulary {self.source_tokenizer.vocab_size}" if self.joint else
                 f"vocabularies {self.source_tokenizer.vocab_size} (source), "
                 f"{self.target_tokenizer.vocab_size} (target)")
        log(f"train: {len(self.train_pairs)} pairs from {train.source_path} / "
            f"{train.target_path}; dropped {too_long} longer than {data.max_source_length} "
            f"(source) or {data.max_target_length} (target) tokens and {empty} with an empty "
            f"side; {vocab}")
        if data.dev:
            dev = self._read(data.dev, data.dev_target, "dev")
            self.dev_sources = self.encode_sources(dev.sources)
            self.dev_targets = self.encode_targets(dev.targets)
            self.dev_references = dev.targets
            log(f"dev: {len(dev.sources)} pairs from {dev.source_path} / {dev.target_path}")

    def save_artifacts(self, directory: Path) -> None:
        save_objects(directory, {TOKENIZER: self.source_tokenizer} if self.joint else
                     {SOURCE_TOKENIZER: self.source_tokenizer,
                      TARGET_TOKENIZER: self.target_tokenizer})

    def load_artifacts(self, directory: Path) -> None:
        if self.joint:
            self.source_tokenizer = TextTokenizer.load(directory / TOKENIZER)
            self.target_tokenizer = self.source_tokenizer
        else:
            self.source_tokenizer = TextTokenizer.load(directory / SOURCE_TOKENIZER)
            self.target_tokenizer = TextTokenizer.load(directory / TARGET_TOKENIZER)

    # --- model ---------------------------------------------------------------------------
    def build_model(self, log: Log, pretrained: bool = True) -> nn.Module:
        m = self.config.model
        return Seq2Seq(
            m, self.source_tokenizer.vocab_size, self.target_tokenizer.vocab_size,
            pad_id=PAD, bos_id=BOS, eos_id=EOS,
            share_source_embedding=m.share_embeddings and self.joint,
        )

    def _batches(
        self, sources: list[list[int]], targets: list[list[int]], order: list[list[int]]
    ) -> list[TranslationBatch]:
        out = []
        for indices in order:
            source, lengths = pad([sources[i] for i in indices], PAD)
            target, _ = pad([targets[i] for i in indices], PAD)
            out.append(TranslationBatch(source, lengths, target, PAD))
        return out

    def train_batches(
        self, epoch: int, rank: int = 0, world_size: int = 1
    ) -> list[TranslationBatch]:
        t = self.config.train
        # Sort key: source length, then target length. Batches whose sources all have one
        # length (most of them, with length bucketing) run the encoder as one fused call.
        keys = [len(src) * 1024 + min(len(tgt), 1023) for src, tgt in self.train_pairs]
        order = bucket_batches(keys, t.batch_size, seed=self.epoch_seed(epoch), pool=t.bucket_pool)
        sources = [src for src, _ in self.train_pairs]
        targets = [tgt for _, tgt in self.train_pairs]
        return self._batches(sources, targets, shard(order, rank, world_size))

    # --- decoding ------------------------------------------------------------------------
    @torch.no_grad()
    def search(
        self, model: Seq2Seq, sources: list[list[int]], beam: int = 1, attention: bool = False
    ) -> list[Hypothesis]:
        """The best hypothesis for each encoded source, in input order (greedy for beam 1).

        With ``attention`` each carries its weights from the same decode, on the CPU:
        (steps, source length), one row per output token and one for ``<eos>`` when it ended.
        """
        model.eval()
        m = self.config.model
        found: list[Hypothesis] = [Hypothesis([], 0.0, 0.0)] * len(sources)
        # Beam search decodes beam rows per sentence: keep the rows per batch about constant.
        batch_size = max(1, self.config.eval.batch_size // max(beam, 1))
        for indices in bucket_batches([len(s) for s in sources], batch_size, shuffle=False):
            source, lengths = pad([sources[i] for i in indices], PAD)
            source, lengths = source.to(self.device), lengths.to(self.device)
            state = model.encode(source, lengths)
            bos = torch.full((len(indices),), BOS, dtype=torch.long, device=self.device)
            limits = max_target_lengths(lengths - 1, m.max_length_a, m.max_length_b)
            if beam <= 1:
                best = greedy_search(model.step, model.reorder_state, state, bos, EOS, limits,
                                     attention=attention)
            else:
                best = [hyps[0] for hyps in beam_search(
                    model.step, model.reorder_state, state, bos, EOS, limits, beam_size=beam,
                    alpha=m.length_penalty, attention=attention,
                )]
            for i, hyp in zip(indices, best):
                if hyp.attention is not None:  # padding columns of the batch cut off
                    hyp = replace(hyp, attention=hyp.attention[:, : len(sources[i])].cpu())
                found[i] = hyp
        return found

    def decode(
        self, model: Seq2Seq, sources: list[list[int]], beam: int = 1
    ) -> list[list[int]]:
        """Target ids (no ``<bos>``/``<eos>``) for encoded sources, in input order."""
        return [hyp.tokens for hyp in self.search(model, sources, beam)]

    def translate(self, sentences: list[str], beam: int | None = None) -> list[str]:
        """Translate plain-text sentences (``beam`` None = ``eval.beam``); empty in, empty out."""
        beam = self.config.eval.beam if beam is None else beam
        texts = [s.strip() for s in text_list(sentences, "translate")]
        real = [i for i, text in enumerate(texts) if text]
        ids = self.decode(self.model, self.encode_sources([texts[i] for i in real]), beam)
        out = [""] * len(texts)
        for i, target in zip(real, ids):
            out[i] = self.target_tokenizer.decode(target)
        return out

    def translate_with_attention(
        self, sentences: list[str], beam: int | None = None
    ) -> list[Translation]:
        """Translate plain-text sentences, each with the attention behind its output, from
        one decode (``beam`` None = ``eval.beam``); an empty sentence gives an empty result."""
        beam = self.config.eval.beam if beam is None else beam
        texts = [s.strip() for s in text_list(sentences, "translate_with_attention")]
        real = [i for i, text in enumerate(texts) if text]
        sources = self.encode_sources([texts[i] for i in real])
        out = [Translation("", [], [], torch.zeros(0, 0)) for _ in texts]
        for i, hyp in zip(real, self.search(self.model, sources, beam, attention=True)):
            target_tokens = [self.target_tokenizer.id_to_token(t) or "?" for t in hyp.tokens]
            if hyp.attention.size(0) > len(hyp.tokens):  # it ended with <eos>
                target_tokens.append("</s>")
            source_tokens = self.source_tokenizer.tokens(texts[i]) + ["</s>"]
            text = self.target_tokenizer.decode(hyp.tokens)
            out[i] = Translation(text, source_tokens, target_tokens, hyp.attention)
        return out

    # --- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def _add_loss(self, counts: LossCounts, model: Seq2Seq, sources: list[list[int]],
                  targets: list[list[int]]) -> None:
        model.eval()
        order = bucket_batches([len(t) for t in targets], self.config.eval.batch_size,
                               shuffle=False)
        for batch in self._batches(sources, targets, order):
            loss, count, _ = model(batch.to(self.device))
            counts.add(float(loss), count)

    def _scores(self, model: Seq2Seq, parts: Iterable[Part], beam: int) -> dict[str, Any]:
        """BLEU and chrF over ``parts`` of (source ids, reference texts, target ids), from
        n-gram statistics and a loss summed over every part."""
        scores, losses = TranslationCounts(), LossCounts()
        for sources, references, targets in parts:
            decoded = self.decode(model, sources, beam)
            scores.add([self.target_tokenizer.decode(ids) for ids in decoded], references)
            self._add_loss(losses, model, sources, targets)
        result = scores.result()
        result["beam"] = beam
        loss = losses.result()
        result.update(loss=loss["loss"], perplexity=loss["perplexity"], tokens=loss["tokens"])
        return result

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        self.require_dev(bool(self.dev_sources), "data.dev and data.dev_target")
        part = (self.dev_sources, self.dev_references, self.dev_targets)
        return self._scores(model, [part], self.config.model.dev_beam)

    def evaluate_files(self, paths: list[str], beam: int | None = None) -> dict[str, Any]:
        """Translate SOURCE and score it against REFERENCE (``eval.beam`` unless given), a
        part at a time: memory stays bounded however long the files are."""
        if len(paths) != 2:
            raise NlpseqError("translation evaluation takes two files: SOURCE REFERENCE")
        beam = self.config.eval.beam if beam is None else beam
        parts = ((self.encode_sources(part.sources), part.targets,
                  self.encode_targets(part.targets))
                 for part in between_parts(iter_parallel(*paths)))
        return self._scores(self.model, parts, beam)

    def predict(self, texts: list[str], beam: int | None = None) -> list[str]:
        """The translation of each text (see :meth:`translate`)."""
        return self.translate(texts, beam)

    def format_output(self, result: str, as_json: bool) -> str:
        return json.dumps({"translation": result}, ensure_ascii=False) if as_json else result
