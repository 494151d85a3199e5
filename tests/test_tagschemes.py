"""Tag schemes, conlleval-style span reading and span F1 on hand-made sequences."""

import pytest

from nlpseq.tagschemes import (
    SpanF1,
    allowed_transitions,
    convert_tags,
    scheme_tags,
    spans_to_tags,
    tags_to_spans,
    validate_tag,
)

# One sentence in the three schemes: two adjacent PER entities, a LOC, a one-token ORG.
IOB1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-LOC", "I-LOC", "I-ORG", "O"]
IOB2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "B-ORG", "O"]
BIOES = ["B-PER", "E-PER", "S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "S-ORG", "O"]
SPANS = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 7), ("ORG", 7, 8)]
BY_SCHEME = {"IOB1": IOB1, "IOB2": IOB2, "BIOES": BIOES}


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "BIOES"])
def test_spans_of_each_scheme(scheme):
    assert tags_to_spans(BY_SCHEME[scheme], scheme) == SPANS
    assert spans_to_tags(SPANS, len(IOB1), scheme) == BY_SCHEME[scheme]


@pytest.mark.parametrize("source", ["IOB1", "IOB2", "BIOES"])
@pytest.mark.parametrize("target", ["IOB1", "IOB2", "BIOES"])
def test_conversions_round_trip(source, target):
    there = convert_tags(BY_SCHEME[source], source, target)
    assert there == BY_SCHEME[target]
    assert convert_tags(there, target, source) == BY_SCHEME[source]


def test_iob1_edge_cases():
    # I-X after O starts an entity; a type change starts a new one; B- only between same types.
    assert tags_to_spans(["I-PER", "I-LOC", "B-LOC", "I-LOC"], "IOB1") == [
        ("PER", 0, 1),
        ("LOC", 1, 2),
        ("LOC", 2, 4),
    ]
    assert convert_tags(["I-PER", "I-LOC", "B-LOC", "I-LOC"], "IOB1", "BIOES") == [
        "S-PER",
        "S-LOC",
        "B-LOC",
        "E-LOC",
    ]
    # adjacent entities of different types: no B- in IOB1
    assert convert_tags(["S-PER", "S-LOC"], "BIOES", "IOB1") == ["I-PER", "I-LOC"]
    # three adjacent same-type entities
    assert convert_tags(["S-MISC", "S-MISC", "B-MISC", "E-MISC"], "BIOES", "IOB1") == [
        "I-MISC",
        "B-MISC",
        "B-MISC",
        "I-MISC",
    ]
    # a B- after O (not written by IOB1 itself) still reads as an entity start
    assert convert_tags(["O", "B-ORG", "I-ORG"], "IOB1", "IOB1") == ["O", "I-ORG", "I-ORG"]
    # IOB1 -> BIOES -> IOB1 keeps well-formed IOB1 as it is
    sentence = ["B-ORG", "O", "I-ORG", "B-ORG", "I-MISC", "I-MISC", "B-MISC"]
    canonical = ["I-ORG", "O", "I-ORG", "B-ORG", "I-MISC", "I-MISC", "B-MISC"]
    assert convert_tags(convert_tags(sentence, "IOB1", "BIOES"), "BIOES", "IOB1") == canonical


def test_ill_formed_sequences_read_like_conlleval():
    # IOB2: I- after O starts an entity; I- of another type starts a new one
    assert tags_to_spans(["O", "I-PER", "I-PER", "I-LOC"], "IOB2") == [("PER", 1, 3), ("LOC", 3, 4)]
    # BIOES: B- then O closes a one-token entity; E- after O is a one-token entity;
    # I- after E- starts a new entity
    assert tags_to_spans(["B-PER", "O", "E-LOC", "I-LOC", "E-LOC"], "BIOES") == [
        ("PER", 0, 1),
        ("LOC", 2, 3),
        ("LOC", 3, 5),
    ]
    assert tags_to_spans(["B-PER", "I-PER"], "BIOES") == [("PER", 0, 2)]  # open at the end
    assert tags_to_spans([], "IOB2") == []


def test_validate_tag():
    for tag in ("O", "B-PER", "I-LOC"):
        validate_tag(tag, "IOB1")
    validate_tag("S-MISC", "BIOES")
    for tag, scheme in [
        ("E-PER", "IOB2"),
        ("PER", "IOB2"),
        ("B-", "IOB1"),
        ("X-PER", "BIOES"),
        ("o", "IOB2"),
        ("", "IOB1"),
    ]:
        with pytest.raises(ValueError):
            validate_tag(tag, scheme)
    with pytest.raises(ValueError):
        tags_to_spans(["O", "S-PER"], "IOB2")
    with pytest.raises(ValueError):
        validate_tag("O", "IOB3")


# Every allowed transition by hand, for the types PER and LOC: (tags, matrix with rows the
# previous tag and columns the next, allowed starts, allowed ends); 1 = allowed.
TRANSITIONS = {
    # O B-PER I-PER B-LOC I-LOC: I-X only continues an X entity
    "IOB2": ("O B-PER I-PER B-LOC I-LOC", """
        1 1 0 1 0
        1 1 1 1 0
        1 1 1 1 0
        1 1 0 1 1
        1 1 0 1 1""", "1 1 0 1 0", "1 1 1 1 1"),
    # IOB1: B-X only directly after an X entity (never at the start); I-X anywhere
    "IOB1": ("O B-PER I-PER B-LOC I-LOC", """
        1 0 1 0 1
        1 1 1 0 1
        1 1 1 0 1
        1 0 1 1 1
        1 0 1 1 1""", "1 0 1 0 1", "1 1 1 1 1"),
    # BIOES: after B-X or I-X only I-X or E-X; after O, E-, S- only O, B-, S-
    "BIOES": ("O B-PER I-PER E-PER S-PER B-LOC I-LOC E-LOC S-LOC", """
        1 1 0 0 1 1 0 0 1
        0 0 1 1 0 0 0 0 0
        0 0 1 1 0 0 0 0 0
        1 1 0 0 1 1 0 0 1
        1 1 0 0 1 1 0 0 1
        0 0 0 0 0 0 1 1 0
        0 0 0 0 0 0 1 1 0
        1 1 0 0 1 1 0 0 1
        1 1 0 0 1 1 0 0 1""", "1 1 0 0 1 1 0 0 1", "1 0 0 1 1 0 0 1 1"),
}


@pytest.mark.parametrize("scheme", sorted(TRANSITIONS))
def test_allowed_transitions(scheme):
    names, matrix, starts, ends = TRANSITIONS[scheme]
    tags = scheme_tags(["PER", "LOC"], scheme)
    assert tags == names.split()
    start, trans, end = allowed_transitions(tags, scheme)
    assert trans.int().tolist() == [[int(x) for x in row.split()]
                                    for row in matrix.strip().splitlines()]
    assert start.int().tolist() == [int(x) for x in starts.split()]
    assert end.int().tolist() == [int(x) for x in ends.split()]


def test_span_f1_hand_counted():
    metric = SpanF1()
    # sentence 1 (IOB1): gold PER(0,2) PER(2,3) LOC(4,7) ORG(7,8);
    # predicted merges the two PERs into PER(0,3), gets LOC right, misses ORG, adds MISC(8,9)
    pred1 = ["I-PER", "I-PER", "I-PER", "O", "I-LOC", "I-LOC", "I-LOC", "O", "I-MISC"]
    metric.add(IOB1, pred1, "IOB1")
    # sentence 2 (IOB1): gold MISC(0,1) PER(2,4); predicted MISC right, PER with wrong span (3,4)
    metric.add(["I-MISC", "O", "I-PER", "I-PER"], ["I-MISC", "O", "O", "I-PER"], "IOB1")
    result = metric.result()
    # gold 6 entities, predicted 5, correct 2 (LOC, MISC)
    assert (result["n_gold"], result["n_pred"], result["n_correct"]) == (6, 5, 2)
    assert result["precision"] == pytest.approx(40.0)
    assert result["recall"] == pytest.approx(100 * 2 / 6)
    assert result["f1"] == pytest.approx(2 * 40.0 * (100 / 3) / (40.0 + 100 / 3))
    per_type = result["per_type"]
    assert per_type["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert per_type["LOC"] == {"precision": 100.0, "recall": 100.0, "f1": 100.0, "support": 1}
    assert per_type["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per_type["MISC"]["precision"] == pytest.approx(50.0)
    assert per_type["MISC"]["recall"] == pytest.approx(100.0)
    assert per_type["MISC"]["f1"] == pytest.approx(200 / 3)
    assert per_type["MISC"]["support"] == 1
    # token accuracy: 6/9 (B-PER, I-ORG, O differ) + 3/4 correct tokens
    assert result["accuracy"] == pytest.approx(100 * 9 / 13)


def test_span_f1_same_spans_any_scheme():
    for scheme, tags in BY_SCHEME.items():
        metric = SpanF1()
        metric.add(tags, tags, scheme)
        result = metric.result()
        assert result["f1"] == 100.0 and result["per_type"]["PER"]["support"] == 2
    empty = SpanF1().result()
    assert empty["f1"] == 0.0 and empty["per_type"] == {}
    with pytest.raises(ValueError):
        SpanF1().add(["O"], ["O", "O"], "IOB2")
