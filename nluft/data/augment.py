"""Word-level augmentation of the training texts, for distillation (`distill.augment`).

A small labelled set gives the student few chances to see how the teacher behaves; TinyBERT and
Tang et al. (2019, "Distilling task-specific knowledge from BERT into simple neural networks")
distil on many perturbed copies of each training text instead, labelled by the teacher. Without a
masked LM to propose replacement words, each copy here is the text's whitespace-separated words,
each one independently replaced by the tokenizer's mask token (`mask_prob`) or left out
(`drop_prob`), then each surviving word swapped with its right neighbour (`swap_prob`). At least
one word always remains. Copies are appended after the original examples (row order: all
originals, then copy 1 of every example, copy 2, ...), carry the original's gold label and source
row (errors still name the right line), and depend only on the text, its position and `seed`.
"""

from __future__ import annotations

import random
from typing import Any

from datasets import Dataset, concatenate_datasets

from nluft.config.schema import AugmentConfig


def augment_words(
    words: list[str], rng: random.Random, options: AugmentConfig, mask_token: str | None
) -> list[str]:
    """One variant of a word list (mask or drop each word, then swap neighbours)."""
    out: list[str] = []
    for word in words:
        draw = rng.random()
        if mask_token is not None and draw < options.mask_prob:
            out.append(mask_token)
        elif draw < options.mask_prob + options.drop_prob:
            continue
        else:
            out.append(word)
    if not out and words:
        out = [rng.choice(words)]
    i = 0
    while i < len(out) - 1:
        if rng.random() < options.swap_prob:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2  # a swapped word is not swapped again
        else:
            i += 1
    return out


def augment_text(
    text: Any, rng: random.Random, options: AugmentConfig, mask_token: str | None
) -> Any:
    """A variant of one text cell (non-strings, e.g. a missing pair, are kept as they are)."""
    if not isinstance(text, str):
        return text
    return " ".join(augment_words(text.split(), rng, options, mask_token))


def augment_split(
    dataset: Dataset, text_columns: list[str], options: AugmentConfig, mask_token: str | None
) -> Dataset:
    """The split followed by `options.copies` variants of every row (other columns copied)."""
    if options.copies == 0 or len(dataset) == 0:
        return dataset
    columns = dataset.to_dict()
    parts = [dataset]
    for copy in range(1, options.copies + 1):
        rows: dict[str, list[Any]] = {name: list(values) for name, values in columns.items()}
        for index in range(len(dataset)):
            rng = random.Random(f"{options.seed}-{copy}-{index}")
            for name in text_columns:
                rows[name][index] = augment_text(columns[name][index], rng, options, mask_token)
        parts.append(Dataset.from_dict(rows, features=dataset.features))
    return concatenate_datasets(parts)
