"""Tag schemes: exact round trips between IOB1, BIO and BIOES, conlleval-style repair, strict validation."""
from __future__ import annotations

import itertools
import random

import pytest

from deepcourse_sequence.schemes import SCHEMES, convert, encode, first_violation, is_span_tag, spans

BIO = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "O", "B-ORG", "B-PER", "I-PER", "I-PER"]
IOB1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "O", "I-ORG", "I-PER", "I-PER", "I-PER"]
BIOES = ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC", "O", "S-ORG", "B-PER", "I-PER", "E-PER"]
SPANS = [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6), ("ORG", 7, 8), ("PER", 8, 11)]
BY_SCHEME = {"BIO": BIO, "IOB1": IOB1, "BIOES": BIOES}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_spans_and_encoding_agree(scheme: str) -> None:
    assert spans(BY_SCHEME[scheme]) == SPANS
    assert encode(SPANS, len(BIO), scheme) == BY_SCHEME[scheme]
    assert first_violation(BY_SCHEME[scheme], scheme) is None


@pytest.mark.parametrize("source,target", list(itertools.permutations(SCHEMES, 2)))
def test_conversions_round_trip(source: str, target: str) -> None:
    converted = convert(BY_SCHEME[source], source, target)
    assert converted == BY_SCHEME[target]
    assert convert(converted, target, source) == BY_SCHEME[source]


def test_round_trip_on_random_span_sets() -> None:
    rng = random.Random(0)
    for _ in range(300):
        n, found, i = rng.randint(1, 12), [], 0
        while i < n:
            if rng.random() < 0.5:
                end = min(n, i + rng.randint(1, 3))
                found.append((rng.choice("AB"), i, end))
                i = end
            else:
                i += 1
        for scheme in SCHEMES:
            tags = encode(found, n, scheme)
            assert spans(tags) == found and first_violation(tags, scheme) is None
            for other in SCHEMES:
                assert convert(convert(tags, scheme, other), other, scheme) == tags


def test_invalid_sequences_are_repaired_like_conlleval() -> None:
    # I- after O starts an entity; a type change inside an entity starts another one
    assert spans(["O", "I-PER", "I-PER", "I-LOC"]) == [("PER", 1, 3), ("LOC", 3, 4)]
    assert convert(["O", "I-PER", "E-PER"], "BIOES", "BIO") == ["O", "B-PER", "I-PER"]
    assert convert(["O", "I-PER", "I-PER"], "BIO", "BIOES") == ["O", "B-PER", "E-PER"]


def test_first_violation_explains_position() -> None:
    where, why = first_violation(["O", "I-PER"], "BIO")
    assert where == 1 and "'I-PER' cannot appear after 'O'" in why and "B-PER" in why
    assert first_violation(["B-PER", "O"], "IOB1")[0] == 0  # IOB1 uses B- only between touching spans
    assert first_violation(["B-PER", "O"], "BIOES")[0] == 0
    assert first_violation(["S-PER"], "BIO")[1].startswith("tag 'S-PER' is not a BIO tag")
    assert first_violation(["NN"], "BIO") is not None


def test_is_span_tag() -> None:
    assert all(map(is_span_tag, ["O", "B-PER", "I-MISC", "E-X", "S-LOC-2"]))
    assert not any(map(is_span_tag, ["NN", "B", "B-", "I_PER", ","]))


@pytest.mark.parametrize("scheme", ["IOB1", "BIO", "BIOES"])
def test_allowed_transitions_are_exactly_the_moves_of_valid_sequences(scheme: str) -> None:
    """A sequence is valid (first_violation finds nothing) exactly when its start, every move and its end are
    allowed: checked on every sequence of up to 3 tags of two types."""
    import itertools

    from deepcourse_sequence.schemes import allowed_transition, first_violation

    prefixes = {"IOB1": "IB", "BIO": "BI", "BIOES": "BIES"}[scheme]
    tags = ["O"] + [f"{p}-{t}" for p in prefixes for t in ("PER", "LOC")]
    for n in (1, 2, 3):
        for seq in itertools.product(tags, repeat=n):
            moves = zip((None, *seq), (*seq, None))
            assert (first_violation(list(seq), scheme) is None) == all(allowed_transition(a, b, scheme)
                                                                        for a, b in moves), (scheme, seq)
