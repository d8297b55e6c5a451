"""Words of raw text for scripts written without spaces (Chinese, Japanese) and with them.

`auto` makes each CJK ideograph, kana character or CJK/full-width punctuation mark a word of its
own (the unit Chinese NER corpora such as MSRA and People's Daily are tagged in) and splits every
other run of characters on whitespace, so "我在Peking University读书" gives 我 在 Peking
University 读 书. `whitespace` only splits on whitespace; `char` makes every non-space
character a word. Every word keeps its character offsets into the original text, so entity spans
map back to the exact characters. Pure Python: no imports beyond the standard library.
"""

from __future__ import annotations

from typing import NamedTuple

SEGMENTATIONS = ("auto", "whitespace", "char")

# Code point ranges of characters that are words on their own in `auto` mode.
CJK_RANGES = (
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x20000, 0x2FA1F),  # Extensions B-F, compatibility supplement
    (0x30000, 0x323AF),  # Extensions G-H
    (0x3040, 0x309F),  # Hiragana
    (0x30A0, 0x30FF),  # Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0xFF66, 0xFF9F),  # half-width Katakana
)
CJK_PUNCTUATION = ((0x3000, 0x303F), (0xFF00, 0xFF65))  # CJK symbols, full-width forms


class Word(NamedTuple):
    """One word of a text and its character offsets [start, end) in that text."""

    text: str
    start: int
    end: int


def in_ranges(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in ranges)


def is_cjk(ch: str) -> bool:
    """Whether `ch` is a CJK ideograph or a kana character."""
    return in_ranges(ch, CJK_RANGES)


def is_single_char_word(ch: str) -> bool:
    """Whether `auto` segmentation makes `ch` a word of its own."""
    return is_cjk(ch) or (in_ranges(ch, CJK_PUNCTUATION) and not ch.isspace())


def segment(text: str, mode: str = "auto") -> list[Word]:
    """The words of `text` with their offsets (see the module docstring for the modes)."""
    if mode not in SEGMENTATIONS:
        raise ValueError(f"unknown word segmentation {mode!r}; use one of {SEGMENTATIONS}")
    words: list[Word] = []
    start = None  # start of the current run of non-space characters
    for i, ch in enumerate(text):
        alone = mode == "char" or (mode == "auto" and is_single_char_word(ch))
        if ch.isspace() or alone:
            if start is not None:
                words.append(Word(text[start:i], start, i))
                start = None
            if alone and not ch.isspace():
                words.append(Word(ch, i, i + 1))
        elif start is None:
            start = i
    if start is not None:
        words.append(Word(text[start:], start, len(text)))
    return words


def cjk_ratio(texts: list[str]) -> float:
    """Share of CJK characters among all non-space characters of `texts` (0 when empty)."""
    total = cjk = 0
    for text in texts:
        for ch in text:
            if not ch.isspace():
                total += 1
                cjk += is_cjk(ch)
    return cjk / total if total else 0.0
