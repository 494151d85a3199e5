"""Tag schemes for span labelling (IOB1, IOB2, BIOES), span extraction and span F1.

Tags are strings: ``O`` or ``PREFIX-TYPE`` (``B-PER``, ``I-LOC``, ``E-ORG``, ``S-MISC``).

- IOB1 (what CoNLL-2003 ships): ``I-X`` starts an entity unless it directly follows a token of
  type X; ``B-X`` appears only where an entity of type X directly follows another one of type X.
- IOB2: every entity starts with ``B-X``, continues with ``I-X``.
- BIOES: ``S-X`` for one-token entities, else ``B-X I-X* E-X``.

``tags_to_spans`` reads every scheme with the rules of the CoNLL ``conlleval`` script, so
ill-formed sequences (``O I-PER`` in IOB2, ``B-PER O`` in BIOES) give the spans conlleval counts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from nlpseq.metrics import prf

SCHEMES: dict[str, frozenset[str]] = {
    "IOB1": frozenset("BI"),
    "IOB2": frozenset("BI"),
    "BIOES": frozenset("BIES"),
}

Span = tuple[str, int, int]  # (type, start, end exclusive)


def check_scheme(scheme: str) -> str:
    """Return the canonical scheme name; raise ValueError for an unknown one."""
    name = scheme.upper()
    if name == "IOBES":  # common alias
        name = "BIOES"
    if name not in SCHEMES:
        raise ValueError(f"unknown tag scheme {scheme!r} (expected one of {sorted(SCHEMES)})")
    return name


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER" -> ("B", "PER")``, ``"O" -> ("O", "")``; no validation against a scheme."""
    if tag == "O":
        return "O", ""
    prefix, sep, entity_type = tag.partition("-")
    if not sep or len(prefix) != 1 or not entity_type:
        return tag, ""
    return prefix, entity_type


def validate_tag(tag: str, scheme: str) -> None:
    """Raise ValueError unless ``tag`` is ``O`` or ``P-TYPE`` with a prefix the scheme allows."""
    prefixes = SCHEMES[check_scheme(scheme)]
    if tag == "O":
        return
    prefix, sep, entity_type = tag.partition("-")
    if not sep or prefix not in prefixes or not entity_type or entity_type.strip() != entity_type:
        allowed = ", ".join(f"{p}-TYPE" for p in sorted(prefixes))
        raise ValueError(f"tag {tag!r} is not in scheme {check_scheme(scheme)} (O, {allowed})")


def tags_to_spans(tags: Sequence[str], scheme: str) -> list[Span]:
    """Entity spans ``(type, start, end_exclusive)`` in order, read like conlleval.

    conlleval's start/end rules apply to every scheme: a chunk ends after E/S, before B/S/O and
    where the type changes; a chunk starts at B/S, at I/E after O/E/S, and where the type changes.
    """
    scheme = check_scheme(scheme)
    spans: list[Span] = []
    start = -1
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate(tags):
        prefix, entity_type = _checked_parts(tag, scheme)
        if prefix == "O" and prev_prefix == "O":
            continue  # the common case, where nothing starts or ends
        if start >= 0 and _chunk_ends(prev_prefix, prefix, prev_type, entity_type):
            spans.append((prev_type, start, i))
            start = -1
        if _chunk_starts(prev_prefix, prefix, prev_type, entity_type):
            start = i
        prev_prefix, prev_type = prefix, entity_type
    if start >= 0:
        spans.append((prev_type, start, len(tags)))
    return spans


@functools.lru_cache(maxsize=4096)
def _checked_parts(tag: str, scheme: str) -> tuple[str, str]:
    """``split_tag(tag)`` once ``validate_tag`` has accepted it; cached, since a corpus has
    only a few distinct tags."""
    validate_tag(tag, scheme)
    return split_tag(tag)


def _chunk_ends(prev_prefix: str, prefix: str, prev_type: str, entity_type: str) -> bool:
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    return prev_prefix != "O" and prev_type != entity_type


def _chunk_starts(prev_prefix: str, prefix: str, prev_type: str, entity_type: str) -> bool:
    if prefix in ("B", "S"):
        return True
    if prev_prefix in ("E", "S", "O") and prefix in ("E", "I"):
        return True
    return prefix != "O" and prev_type != entity_type


def spans_to_tags(spans: Sequence[Span], length: int, scheme: str) -> list[str]:
    """Write non-overlapping spans as a tag sequence of ``length`` tokens in ``scheme``."""
    scheme = check_scheme(scheme)
    tags = ["O"] * length
    prev_end, prev_type = -1, ""
    for entity_type, start, end in sorted(spans, key=lambda s: (s[1], s[2])):
        if not 0 <= start < end <= length:
            raise ValueError(f"span {(entity_type, start, end)} outside a sequence of {length}")
        if start < prev_end:
            raise ValueError(f"span {(entity_type, start, end)} overlaps the previous span")
        if scheme == "IOB1":
            # B- only where this entity directly follows one of the same type.
            first = "B" if (prev_end == start and prev_type == entity_type) else "I"
            tags[start] = f"{first}-{entity_type}"
            for i in range(start + 1, end):
                tags[i] = f"I-{entity_type}"
        elif scheme == "IOB2":
            tags[start] = f"B-{entity_type}"
            for i in range(start + 1, end):
                tags[i] = f"I-{entity_type}"
        else:  # BIOES
            if end - start == 1:
                tags[start] = f"S-{entity_type}"
            else:
                tags[start] = f"B-{entity_type}"
                for i in range(start + 1, end - 1):
                    tags[i] = f"I-{entity_type}"
                tags[end - 1] = f"E-{entity_type}"
        prev_end, prev_type = end, entity_type
    return tags


def convert_tags(tags: Sequence[str], source: str, target: str) -> list[str]:
    """Convert a tag sequence between schemes via its (conlleval-read) spans.

    Well-formed input round-trips exactly; ill-formed input comes out in canonical form.
    """
    return spans_to_tags(tags_to_spans(tags, source), len(tags), target)


def scheme_tags(entity_types: Sequence[str], scheme: str) -> list[str]:
    """All tags of ``scheme`` for the given entity types: ``O`` first, then per type in order."""
    prefixes = {"IOB1": "BI", "IOB2": "BI", "BIOES": "BIES"}[check_scheme(scheme)]
    return ["O"] + [f"{p}-{t}" for t in entity_types for p in prefixes]


def allowed_transitions(
    tags: Sequence[str], scheme: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean masks of well-formed tag sequences for a CRF.

    Returns ``start_allowed (K,)``, ``trans_allowed (K, K)`` with ``[i, j]`` = tag j may follow
    tag i, and ``end_allowed (K,)``. Tags not of the scheme raise ValueError.
    """
    scheme = check_scheme(scheme)
    for tag in tags:
        validate_tag(tag, scheme)
    parts = [split_tag(t) for t in tags]
    num_tags = len(tags)
    start = torch.ones(num_tags, dtype=torch.bool)
    end = torch.ones(num_tags, dtype=torch.bool)
    trans = torch.ones(num_tags, num_tags, dtype=torch.bool)
    for j, (prefix, entity_type) in enumerate(parts):
        if scheme == "IOB1":
            # B-X is only ever written after an X entity, never at the start.
            start[j] = prefix != "B"
        elif scheme == "IOB2":
            start[j] = prefix != "I"
        else:
            start[j] = prefix in ("O", "B", "S")
            end[j] = prefix in ("O", "E", "S")
        for i, (prev_prefix, prev_type) in enumerate(parts):
            trans[i, j] = _may_follow(scheme, prev_prefix, prev_type, prefix, entity_type)
    return start, trans, end


def _may_follow(
    scheme: str, prev_prefix: str, prev_type: str, prefix: str, entity_type: str
) -> bool:
    inside = prev_prefix in ("B", "I")  # an entity is open and may continue
    if scheme == "IOB1":
        return prefix != "B" or (inside and prev_type == entity_type)
    if scheme == "IOB2":
        return prefix != "I" or (inside and prev_type == entity_type)
    # BIOES: an open entity must continue with I/E of its type; a closed one can't be continued.
    if inside:
        return prefix in ("I", "E") and prev_type == entity_type
    return prefix in ("O", "B", "S")


class SpanF1:
    """Entity-level precision/recall/F1 from summed counts, as conlleval computes them.

    An entity counts as correct only if its type, start and end all match. Figures in percent.
    """

    def __init__(self) -> None:
        self.tp: dict[str, int] = {}
        self.n_gold: dict[str, int] = {}
        self.n_pred: dict[str, int] = {}
        self.n_tokens = 0
        self.n_correct_tokens = 0
        self.n_sentences = 0

    def add(self, gold_tags: Sequence[str], pred_tags: Sequence[str], scheme: str) -> None:
        """Count one sentence; both tag sequences are in ``scheme``."""
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"gold has {len(gold_tags)} tags, prediction {len(pred_tags)}")
        self.add_spans(tags_to_spans(gold_tags, scheme), tags_to_spans(pred_tags, scheme))
        self.n_tokens += len(gold_tags)
        self.n_correct_tokens += sum(g == p for g, p in zip(gold_tags, pred_tags, strict=True))

    def add_spans(self, gold: Sequence[Span], pred: Sequence[Span]) -> None:
        """Count one sentence given its gold and predicted spans."""
        self.n_sentences += 1
        for entity_type, _, _ in gold:
            self.n_gold[entity_type] = self.n_gold.get(entity_type, 0) + 1
        for entity_type, _, _ in pred:
            self.n_pred[entity_type] = self.n_pred.get(entity_type, 0) + 1
        for entity_type, _, _ in set(gold) & set(pred):
            self.tp[entity_type] = self.tp.get(entity_type, 0) + 1

    def result(self) -> dict:
        """``{"precision", "recall", "f1", "accuracy", "per_type": {T: {...}}, counts}``."""
        types = sorted(set(self.n_gold) | set(self.n_pred))
        per_type = {}
        for entity_type in types:
            tp = self.tp.get(entity_type, 0)
            n_gold = self.n_gold.get(entity_type, 0)
            n_pred = self.n_pred.get(entity_type, 0)
            per_type[entity_type] = {**_prf(tp, n_gold, n_pred), "support": n_gold}
        tp, n_gold, n_pred = (
            sum(self.tp.values()),
            sum(self.n_gold.values()),
            sum(self.n_pred.values()),
        )
        accuracy = 100.0 * self.n_correct_tokens / self.n_tokens if self.n_tokens else 0.0
        return {
            **_prf(tp, n_gold, n_pred),
            "accuracy": accuracy,
            "per_type": per_type,
            "n_gold": n_gold,
            "n_pred": n_pred,
            "n_correct": tp,
        }


def _prf(tp: int, n_gold: int, n_pred: int) -> dict[str, float]:
    """Precision, recall and F1 as percentages."""
    precision, recall, f1 = prf(tp, n_pred - tp, n_gold - tp)
    return {"precision": 100.0 * precision, "recall": 100.0 * recall, "f1": 100.0 * f1}
