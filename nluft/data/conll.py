"""CoNLL files (the CoNLL-2003 layout): one token per line, a blank line between sentences.

Columns are separated by tabs (when the line has one) or by spaces; the token is the first column
and the tag sits in a configurable column (the last by default). `-DOCSTART-` lines are document
breaks and are skipped. Only ASCII whitespace separates columns and only line feeds (with an
optional carriage return) end lines: other Unicode spaces and breaks (a no-break space in
"10 000", U+2028) are part of a token, as they are to the tokenizer.
"""

from __future__ import annotations

import re
from pathlib import Path

from datasets import Dataset

from nluft.config import NerConfig
from nluft.errors import NluftError

DOCSTART = "-DOCSTART-"
BLANKS = " \t\r\f\v"  # ASCII whitespace: the only column separators
SPACES = re.compile(r"[ \r\f\v]+")
LINE_COLUMN = "_line"  # 1-based line of an example's first token, so errors name the exact line
CONLL_SUFFIXES = (".txt", ".bio", ".bmes", ".bioes", ".iob", ".iob2")  # CoNLL only by content
TAG = re.compile(r"^(O|[BIEMS]-\S+)$")
SNIFF_LINES = 200


def looks_like_conll(path: str, ner: NerConfig) -> bool:
    """Whether the file's first lines are `TOKEN ... TAG` lines (tags like O, B-PER, M-LOC)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = [line for _, line in zip(range(SNIFF_LINES), handle, strict=False)]
    except (OSError, UnicodeDecodeError):
        return False
    rows = [split_fields(line.rstrip("\n")) for line in lines]
    rows = [fields for fields in rows if fields and fields[0] != DOCSTART]
    if not rows:
        return False
    for fields in rows:
        index = ner.tag_column if ner.tag_column >= 0 else len(fields) + ner.tag_column
        if len(fields) < 2 or not 0 < index < len(fields) or not TAG.match(fields[index]):
            return False
    return True


def read_conll(path: str, ner: NerConfig) -> Dataset:
    """Sentences of a CoNLL file as a Dataset with token and tag columns named by `ner`."""
    try:
        # utf-8-sig: a byte-order mark (Windows editors) is not part of the first token.
        lines = Path(path).read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError as err:
        raise NluftError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    starts: list[int] = []
    current: tuple[list[str], list[str]] = ([], [])
    for number, line in enumerate(lines, start=1):
        fields = split_fields(line)
        if not fields or fields[0] == DOCSTART:
            if current[0]:
                tokens.append(current[0])
                tags.append(current[1])
            current = ([], [])
            continue
        if not current[0]:
            starts.append(number)
        token, tag = token_and_tag(fields, ner.tag_column, f"{path}:{number}")
        current[0].append(token)
        current[1].append(tag)
    if current[0]:
        tokens.append(current[0])
        tags.append(current[1])
    if not tokens:
        raise NluftError(f"{path}: no sentences (expected 'TOKEN ... TAG' lines)")
    return Dataset.from_dict(
        {
            ner.tokens_column: tokens,
            ner.tags_column: tags,
            LINE_COLUMN: starts,
        }
    )


def split_fields(line: str) -> list[str]:
    """Tab-separated when the line has a tab (tokens may then hold spaces), else on whitespace."""
    if "\t" in line:
        fields = [field.strip(BLANKS) for field in line.split("\t")]
        return fields if any(fields) else []
    return [field for field in SPACES.split(line) if field]


def token_and_tag(fields: list[str], tag_column: int, where: str) -> tuple[str, str]:
    """The token (first column) and the tag (column `tag_column`) of one line."""
    index = tag_column if tag_column >= 0 else len(fields) + tag_column
    if len(fields) < 2 or not 0 <= index < len(fields) or not fields[0] or not fields[index]:
        raise NluftError(
            f"{where}: expected 'TOKEN ... TAG' with the tag in column {tag_column} "
            f"(got {' | '.join(fields)!r}); check ner.tag_column and that sentences are "
            "separated by blank lines"
        )
    if index == 0:
        raise NluftError(f"{where}: ner.tag_column points at the token column; use 1+ or -1")
    return fields[0], fields[index]
