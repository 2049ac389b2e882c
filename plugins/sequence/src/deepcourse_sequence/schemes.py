"""Span tag schemes (IOB1, BIO = IOB2, BIOES = IOBES) and exact conversions between them.

Every conversion goes through spans: tags are read with conlleval's chunk-boundary rules (the ones seqeval's
default mode and the CoNLL scorer use), then written in the target scheme. So a valid sequence round-trips
exactly, and an invalid one (`I-PER` after `O`) is repaired the way conlleval would score it. Training in BIOES
and scoring in BIO, as NCRF++ does, is `convert(tags, "BIO", "BIOES")` on the way in and back on the way out.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

Scheme = Literal["IOB1", "BIO", "BIOES"]
SCHEMES: tuple[str, ...] = ("IOB1", "BIO", "BIOES")
_PREFIXES = {"IOB1": "IB", "BIO": "IB", "BIOES": "BIES"}
SPAN_TAG = re.compile(r"^(O|[BIES]-.+)$")

Span = tuple[str, int, int]  # (type, start, end) with `end` exclusive


def is_span_tag(tag: str) -> bool:
    """True for `O` and prefixed tags such as `B-PER`: the tags a span column is made of."""
    return SPAN_TAG.match(tag) is not None


def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''). Anything else is read as an untyped inside tag."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BIES":
        return tag[0], tag[2:]
    return "I", tag


def _chunk_end(prev: str, prev_type: str, tag: str, type_: str) -> bool:
    if prev in "ES":
        return True
    if prev in "BI" and tag in "BSO":
        return True
    return prev != "O" and prev_type != type_


def _chunk_start(prev: str, prev_type: str, tag: str, type_: str) -> bool:
    if tag in "BS":
        return True
    if prev in "ESO" and tag in "IE":
        return True
    return tag != "O" and prev_type != type_


def spans(tags: Sequence[str]) -> list[Span]:
    """The labelled spans of a tag sequence in any scheme, by conlleval's rules."""
    found: list[Span] = []
    prev, prev_type, start = "O", "", -1
    for i, tag in enumerate((*tags, "O")):
        cur, type_ = split_tag(tag)
        if start >= 0 and _chunk_end(prev, prev_type, cur, type_):
            found.append((prev_type, start, i))
            start = -1
        if _chunk_start(prev, prev_type, cur, type_):
            start = i
        prev, prev_type = cur, type_
    return found


def encode(found: Sequence[Span], length: int, scheme: Scheme) -> list[str]:
    """Write spans as tags of `scheme` (the canonical encoding: IOB1 uses B- only between touching spans)."""
    tags = ["O"] * length
    last_end: dict[str, int] = {}
    for type_, start, end in found:
        if scheme == "BIOES" and end - start == 1:
            tags[start] = f"S-{type_}"
            continue
        inside = f"I-{type_}"
        tags[start:end] = [inside] * (end - start)
        if scheme == "BIO" or scheme == "BIOES" or last_end.get(type_) == start:
            tags[start] = f"B-{type_}"
        if scheme == "BIOES":
            tags[end - 1] = f"E-{type_}"
        last_end[type_] = end
    return tags


def convert(tags: Sequence[str], source: Scheme, target: Scheme) -> list[str]:
    """Re-encode a tag sequence; the identity on valid sequences when source == target."""
    if source == target:
        return list(tags)
    return encode(spans(tags), len(tags), target)


def first_violation(tags: Sequence[str], scheme: Scheme) -> tuple[int, str] | None:
    """(position, explanation) of the first tag that `scheme` forbids, or None for a valid sequence."""
    allowed = _PREFIXES[scheme]
    for i, tag in enumerate(tags):
        prefix, _ = split_tag(tag)
        if not is_span_tag(tag) or (prefix != "O" and prefix not in allowed):
            return i, f"tag '{tag}' is not a {scheme} tag (expected O or {'/'.join(allowed)}-TYPE)"
    canonical = encode(spans(tags), len(tags), scheme)
    for i, (tag, want) in enumerate(zip(tags, canonical, strict=True)):
        if tag != want:
            before = f"after '{tags[i - 1]}'" if i else "at the start of a sentence"
            after = f" before '{tags[i + 1]}'" if i + 1 < len(tags) else " at the end of a sentence"
            return i, (f"tag '{tag}' cannot appear {before}{after if tag[0] in 'BI' and scheme == 'BIOES' else ''} "
                       f"in the {scheme} scheme (a valid sequence has '{want}' here)")
    return None


def allowed_transition(prev: str | None, tag: str | None, scheme: Scheme) -> bool:
    """Whether `tag` may follow `prev` in a valid sequence of `scheme` (`prev` None: the sentence's start; `tag`
    None: its end): a sequence is valid exactly when each of its moves is (`first_violation` finds none). A CRF
    trained on valid data learns low scores for the moves that are not, such as O -> I-PER."""
    prev_prefix, prev_type = split_tag(prev) if prev is not None else ("O", "")
    prefix, type_ = split_tag(tag) if tag is not None else ("O", "")
    if scheme == "BIOES":
        if prev_prefix in "BI":  # a span is open: it goes on (I) or closes (E), with its own type
            return tag is not None and prefix in "IE" and type_ == prev_type
        return tag is None or prefix in "OBS"
    if prefix == "I":  # BIO: I-X continues a span of X; IOB1: I-X may also start one
        return scheme == "IOB1" or prev_prefix in "BI" and prev_type == type_
    if prefix == "B" and scheme == "IOB1":  # IOB1 writes B-X only where a span of X touches the one before
        return prev_prefix in "BI" and prev_type == type_
    return True
