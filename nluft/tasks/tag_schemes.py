"""Tag schemes for NER: the label set, well-formed sequences, entity spans, seqeval's view.

- BIO (IOB2): B- begins every entity, I- continues it.
- IOB1 (CoNLL-2003's original files): I- everywhere; B- only where an entity directly follows
  another of the same type.
- BIOES: B- begins, I- continues, E- ends a multi-word entity; S- is a one-word entity.
- BMES (BIOES with M, the usual scheme of Chinese corpora such as MSRA): M- instead of I-.
seqeval knows IOB1, IOB2 and IOBES; BMES is read as IOBES with M- written I- (`to_seqeval`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PREFIXES = {
    "BIO": ("B", "I"),
    "IOB1": ("B", "I"),
    "BIOES": ("B", "I", "E", "S"),
    "BMES": ("B", "M", "E", "S"),
}
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


def inside_of(tag: str, scheme: str = "BIO") -> str:
    """The tag of a word's later sub-tokens when every sub-token is labelled: B-X -> I-X (M-X)."""
    prefix, kind = split_tag(tag)
    inside = "M" if scheme == "BMES" else "I"
    return f"{inside}-{kind}" if prefix == "B" else tag


def to_seqeval(tags: Sequence[str], scheme: str) -> list[str]:
    """The tags as seqeval reads them (BMES's M- becomes I-; the others are unchanged)."""
    if scheme != "BMES":
        return list(tags)
    return [f"I-{tag[2:]}" if tag.startswith("M-") else tag for tag in tags]


def from_bio(tags: Sequence[str], scheme: str) -> list[str]:
    """BIO tags rewritten in `scheme` (for spans read from annotation tools)."""
    if scheme == "BIO":
        return list(tags)
    out = list(tags)
    for kind, start, end in entity_spans(tags, "BIO"):
        if scheme == "IOB1":
            follows = start > 0 and split_tag(tags[start - 1])[1] == kind
            out[start:end] = [f"{'B' if follows else 'I'}-{kind}"] + [f"I-{kind}"] * (
                end - start - 1
            )
        elif end - start == 1:
            out[start] = f"S-{kind}"
        else:
            inside = "M" if scheme == "BMES" else "I"
            middle = [f"{inside}-{kind}"] * (end - start - 2)
            out[start:end] = [f"B-{kind}", *middle, f"E-{kind}"]
    return out


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
    if scheme in ("BIOES", "BMES"):
        inside = "M" if scheme == "BMES" else "I"
        is_open = p_prefix in ("B", inside) and p_kind != ""
        if is_open and not (prefix in (inside, "E") and kind == p_kind):
            return (
                f"{tag} after {prev} (in {scheme} an entity opened by {prev} ends with E-{p_kind})"
            )
        if not is_open and prefix in (inside, "E"):
            return f"{tag} after {prev} (in {scheme} an entity starts with B-{kind} or is S-{kind})"
    return ""


def entity_spans(tags: Sequence[str], scheme: str = "BIO") -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of each entity, read leniently like conlleval."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, start, end + 1) for kind, start, end in get_entities(to_seqeval(tags, scheme))]
