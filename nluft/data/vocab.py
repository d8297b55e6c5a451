"""Extend a tokenizer with the training data's characters it cannot represent (`[UNK]`).

A checkpoint pre-trained on English (the packaged MiniLM holds 244 CJK characters) reads most
Chinese characters as `[UNK]`, so "北京" and "上海" look the same to it. With
`model.extend_vocab_from_data: true` every character of the training inputs that the tokenizer
maps to its unknown token becomes a new token; the model's embedding matrix grows to match
(`grow_embeddings`, new rows drawn around the mean of the pre-trained ones, as transformers'
`mean_resizing` does), and both are saved with the export, so `nluft eval` and `nluft predict`
load them. It works with any checkpoint; one with a Chinese vocabulary (bert-base-chinese) has
nothing to add.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from datasets import Dataset, DatasetDict

from nluft.config import Config
from nluft.tasks import Task


def input_texts(cfg: Config, task: Task, dataset: Dataset) -> list[str]:
    """The model-input strings of a split (texts, words, questions and contexts)."""
    columns = list(getattr(task, "input_columns", None) or [])
    columns += [c for c in (cfg.data.text_column, cfg.data.text_pair_column) if c]
    if task.name == "qa":
        columns += ["question", "context"]
    texts: list[str] = []
    for column in dict.fromkeys(c for c in columns if c in dataset.column_names):
        for value in dataset[column]:
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                texts += [str(v) for v in value]
    return texts


def unknown_characters(tokenizer: Any, texts: Iterable[str]) -> Counter[str]:
    """Characters of `texts` that the tokenizer turns into its unknown token, with counts."""
    counts = Counter(ch for text in texts for ch in text if not ch.isspace())
    if tokenizer.unk_token_id is None or not counts:
        return Counter()
    chars = sorted(counts)
    encoded = tokenizer(chars, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    return Counter({ch: counts[ch] for ch, ids in zip(chars, encoded, strict=True) if unk in ids})


def unk_rate(tokenizer: Any, texts: Iterable[str]) -> float:
    """Share of non-special tokens of `texts` that are the unknown token."""
    total = unknown = 0
    unk = tokenizer.unk_token_id
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        total += len(ids)
        unknown += sum(1 for i in ids if i == unk)
    return unknown / total if total else 0.0


def extend_vocab(tokenizer: Any, texts: Iterable[str]) -> list[str]:
    """Add each character that maps to the unknown token as a token; returns those added."""
    missing = sorted(unknown_characters(tokenizer, texts))
    if missing:
        tokenizer.add_tokens(missing)
    return missing


def extend_vocab_from_data(cfg: Config, task: Task, examples: DatasetDict, tokenizer: Any) -> None:
    """`model.extend_vocab_from_data`: extend with the training split's unknown characters.

    The same training data gives the same tokens in the same order on every rank and every run
    (resume, export); a tokenizer that already has them (an export) is left as it is.
    """
    if cfg.model.extend_vocab_from_data:
        extend_vocab(tokenizer, input_texts(cfg, task, examples["train"]))


def grow_embeddings(model: Any, tokenizer: Any, mean_resizing: bool = True) -> None:
    """Resize the input (and tied output) embeddings when the tokenizer has more tokens.

    `mean_resizing`: new rows drawn around the old rows' mean (off for shapes-only meta models).
    """
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=mean_resizing)
