"""Tag schemes for NER (BIO, IOB1, BIOES): the label set, well-formed sequences, entity spans."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PREFIXES = {"BIO": ("B", "I"), "IOB1": ("B", "I"), "BIOES": ("B", "I", "E", "S")}
OUTSIDE = "O"


def split_tag(tag: str) -> tuple[str, str]:
    """`B-PER` -> ("B", "PER"); `O` -> ("O", "")."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def is_scheme_tag(tag: str, scheme: str) -> bool:
    """Whether `tag` can occur in `scheme` at all (`O`, or a known prefix, a dash and a type)."""
    prefix, kind = split_tag(tag)
    return tag == OUTSIDE or (prefix in PREFIXES[scheme] and bool(kind) and tag[1:2] == "-")


def build_label_names(types: Iterable[str], scheme: str) -> list[str]:
    """`O` then every prefix of every entity type, so the model can predict any well-formed tag."""
    return [OUTSIDE] + [f"{p}-{t}" for t in sorted(set(types)) for p in PREFIXES[scheme]]


def inside_of(tag: str) -> str:
    """The tag of a word's later sub-tokens when every sub-token is labelled: B-X -> I-X."""
    prefix, kind = split_tag(tag)
    return f"I-{kind}" if prefix == "B" else tag


def invalid_transitions(tags: Sequence[str], scheme: str) -> list[tuple[int, str]]:
    """(token index, reason) for every tag that breaks the scheme's sequence rules."""
    problems: list[tuple[int, str]] = []
    prev = OUTSIDE
    for i, tag in enumerate([*tags, OUTSIDE]):  # the sentinel closes a BIOES entity at the end
        reason = transition_problem(prev, tag, scheme)
        if reason:
            problems.append((min(i, len(tags) - 1), reason))
        prev = tag
    return problems


def transition_problem(prev: str, tag: str, scheme: str) -> str:
    """Why `tag` may not follow `prev` in `scheme` ("" when it may)."""
    p_prefix, p_kind = split_tag(prev)
    prefix, kind = split_tag(tag)
    if scheme == "BIO" and prefix == "I" and not (p_prefix in "BI" and p_kind == kind):
        return f"{tag} after {prev} (in BIO an entity starts with B-{kind})"
    if scheme == "IOB1" and prefix == "B" and not (p_prefix in "BI" and p_kind == kind):
        return f"{tag} after {prev} (in IOB1, B- only separates two adjacent {kind} entities)"
    if scheme == "BIOES":
        is_open = p_prefix in ("B", "I") and p_kind != ""
        if is_open and not (prefix in ("I", "E") and kind == p_kind):
            return f"{tag} after {prev} (in BIOES an entity opened by {prev} ends with E-{p_kind})"
        if not is_open and prefix in ("I", "E"):
            return f"{tag} after {prev} (in BIOES an entity starts with B-{kind} or is S-{kind})"
    return ""


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of each entity, read leniently like conlleval."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, start, end + 1) for kind, start, end in get_entities(list(tags))]
