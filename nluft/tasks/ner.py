"""Named-entity recognition as token classification: word tags, sub-token labels, windows.

Each word is labelled on its first sub-token (or on every sub-token, B- turned into I-).
Sentences longer than `data.max_length` are cut at word boundaries into overlapping windows;
each word is predicted from the window where it has the most context, so none is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Sequence

from nluft.config import Config
from nluft.errors import ExampleError
from nluft.metrics import entity_scores
from nluft.segmentation import Word, segment
from nluft.tasks.base import Finding
from nluft.tasks.tag_schemes import (
    PREFIXES,
    build_label_names,
    entity_spans,
    inside_of,
    invalid_transitions,
    is_scheme_tag,
    split_tag,
    to_seqeval,
)

IGNORE = -100  # cross-entropy skips these positions (special tokens, later sub-tokens)
SPAN_ERRORS = "_span_errors"  # per example: problems of its character spans (nluft.data.spans)


class NerTask:
    """`task: ner`. Words come from `ner.tokens_column`, or from `data.text_column` segmented by
    `ner.word_segmentation` (each CJK character a word by default)."""

    name = "ner"
    model_kind = "token_classification"
    has_confusion_matrix = False
    default_metric = "f1"
    split_into_words = True  # models.py sets add_prefix_space for byte-level BPE tokenizers

    def __init__(self, cfg: Config) -> None:
        self.data = cfg.data
        self.options = cfg.ner
        self.label_names: list[str] = []
        self.tag_names: list[str] | None = None  # names of integer tags (ClassLabel features)

    @property
    def columns(self) -> dict[str, str]:
        """Config key -> column the data must have."""
        return {
            "ner.tokens_column": self.options.tokens_column,
            "ner.tags_column": self.options.tags_column,
        }

    @property
    def input_columns(self) -> list[str]:
        """Columns that make up the model input (duplicate checks compare these)."""
        return [self.options.tokens_column]

    # --- labels ------------------------------------------------------------------------------

    def prepare(self, splits: Mapping[str, Dataset]) -> None:
        train = splits["train"]
        feature = train.features.get(self.options.tags_column)
        if isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel):
            self.tag_names = list(feature.feature.names)
        self.label_names = self.build_labels(train)
        for split, dataset in splits.items():
            if SPAN_ERRORS in dataset.column_names:
                for row, errors in enumerate(dataset[SPAN_ERRORS]):
                    if errors:
                        raise ExampleError(row, f"{split}: {errors[0]}")
            for row, tags in enumerate(self.tag_lists(dataset)):
                self.check_example(split, row, dataset[row][self.options.tokens_column], tags)

    def build_labels(self, train: Dataset) -> list[str]:
        """`data.label_names` if set, else `O` and every scheme prefix of the training types."""
        if self.data.label_names:
            return list(self.data.label_names)
        scheme = self.options.tag_scheme
        types = {
            split_tag(tag)[1]
            for tags in self.tag_lists(train)
            for tag in tags
            if is_scheme_tag(tag, scheme)  # the others are reported by check_example
        }
        types.discard("")
        return build_label_names(types, scheme)

    def unknown(self, tag: str) -> str:
        scheme = self.options.tag_scheme
        if not is_scheme_tag(tag, scheme):
            return (
                f"tag {tag!r} is not a {scheme} tag (O or {'/'.join(PREFIXES[scheme])}-TYPE); "
                "set ner.tag_scheme or ner.tag_column"
            )
        return (
            f"tag {tag!r} is not in the label set ({len(self.label_names)} tags from the "
            "training data or data.label_names)"
        )

    def check_example(self, split: str, row: int, tokens: list[str], tags: list[str]) -> None:
        if len(tokens) != len(tags):
            raise ExampleError(row, f"{split}: {len(tokens)} tokens but {len(tags)} tags")
        known = set(self.label_names)
        for i, tag in enumerate(tags):
            if tag not in known:
                raise ExampleError(row, f"{split}: {self.unknown(tag)}", token=i)

    def tag_lists(self, dataset: Dataset) -> list[list[str]]:
        return [self.tags_of(value) for value in dataset[self.options.tags_column]]

    def tags_of(self, value: list[Any]) -> list[str]:
        """Tag names of one example (integer tags are ClassLabel ids or `data.label_names`)."""
        names = self.tag_names or self.data.label_names or self.label_names
        return [names[v] if isinstance(v, int) else str(v) for v in (value or [])]

    def check(self, split: str, examples: Dataset, tokenizer: Any) -> list[Finding]:
        """Tags outside the label set and tag sequences the scheme forbids, each where it is."""
        findings: list[Finding] = []
        known = set(self.label_names)
        tokens_of = examples[self.options.tokens_column]
        if SPAN_ERRORS in examples.column_names:
            for row, errors in enumerate(examples[SPAN_ERRORS]):
                findings += [Finding("error", split, error, row=row) for error in errors]
        for row, (tokens, tags) in enumerate(zip(tokens_of, self.tag_lists(examples), strict=True)):
            if len(tokens) != len(tags):
                message = f"{len(tokens)} tokens but {len(tags)} tags"
                findings.append(Finding("error", split, message, row=row))
            for i, tag in enumerate(tags):
                if tag not in known:
                    findings.append(Finding("error", split, self.unknown(tag), row=row, token=i))
            for i, reason in invalid_transitions(tags, self.options.tag_scheme):
                message = f"invalid tag sequence: {reason}"
                findings.append(Finding("error", split, message, row=row, token=i))
        return findings

    def label_counts(self, examples: Dataset) -> dict[str, int]:
        """Entities per type (the distribution check-data reports)."""
        counts: dict[str, int] = {}
        for tags in self.tag_lists(examples):
            for kind, _, _ in entity_spans(tags, self.options.tag_scheme):
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    # --- encoding and loss -------------------------------------------------------------------

    def words_of(self, examples: dict[str, list[Any]]) -> list[list[str]]:
        """Words per example: the tokens column, or the text column segmented into words."""
        if self.options.tokens_column in examples:
            return [[str(w) for w in (ws or [])] for ws in examples[self.options.tokens_column]]
        return [[w.text for w in self.segment(text)] for text in examples[self.data.text_column]]

    def segment(self, text: Any) -> list[Word]:
        """Words of a raw text with their character offsets (`ner.word_segmentation`)."""
        return segment(str(text or ""), self.options.word_segmentation)

    def encode(self, examples: dict[str, list[Any]], tokenizer: Any) -> dict[str, list[Any]]:
        words = self.words_of(examples)
        counts = subtoken_counts(words, tokenizer)
        budget = self.data.max_length - tokenizer.num_special_tokens_to_add(pair=False)
        # A word the tokenizer erases (e.g. a zero-width space) becomes UNK, so it keeps a label.
        unk = tokenizer.unk_token or "."
        pieces: list[tuple[int, int, list[str]]] = []  # (example, first word, words)
        for row, sentence in enumerate(words):
            cleaned = [w if n else unk for w, n in zip(sentence, counts[row], strict=True)]
            sizes = [max(1, n) for n in counts[row]]
            for start, end in word_windows(sizes, budget, self.options.stride):
                pieces.append((row, start, cleaned[start:end]))
        enc = tokenizer(
            [p[2] for p in pieces],
            is_split_into_words=True,
            truncation=True,
            max_length=self.data.max_length,
        )
        out: dict[str, list[Any]] = {key: list(value) for key, value in enc.items()}
        out["example_id"], out["word_index"], labels = [], [], []
        for i, (row, start, _) in enumerate(pieces):
            word_ids = [None if w is None else w + start for w in enc.word_ids(i)]
            out["example_id"].append(row)
            out["word_index"].append(first_subtokens(word_ids))
            if self.options.tags_column in examples:
                tags = self.tags_of(examples[self.options.tags_column][row])
                labels.append(self.token_labels(word_ids, tags))
        if self.options.tags_column in examples:  # absent when predicting on raw text
            out["labels"] = labels
        return out

    def token_labels(self, word_ids: list[int | None], tags: list[str]) -> list[int]:
        """Label ids per sub-token: the word's tag on its first sub-token, IGNORE elsewhere."""
        ids = {name: i for i, name in enumerate(self.label_names)}
        labels, prev = [], None
        for w in word_ids:
            if w is None:
                labels.append(IGNORE)
            elif w != prev:
                labels.append(ids[tags[w]])
            else:
                labels.append(
                    ids[inside_of(tags[w], self.options.tag_scheme)]
                    if self.options.label_all_subtokens
                    else IGNORE
                )
            prev = w
        return labels

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
        )

    # --- decoding and scoring ----------------------------------------------------------------

    def predict(self, logits: list[np.ndarray], features: Dataset, examples: Dataset) -> list[Any]:
        """Tag names per word; a word seen in several windows takes the one with most context."""
        best: dict[tuple[int, int], tuple[int, int, int]] = {}  # (example, word) -> (ctx, -f, pos)
        for f, (example, word_index) in enumerate(
            zip(features["example_id"], features["word_index"], strict=True)
        ):
            words = [w for w in word_index if w >= 0]
            for pos, w in enumerate(word_index):
                if w < 0:
                    continue
                candidate = (min(w - words[0], words[-1] - w), -f, pos)
                key = (example, w)
                if key not in best or candidate > best[key]:
                    best[key] = candidate
        out: list[list[str]] = []
        for example, sentence in enumerate(self.words_of(examples.to_dict())):
            tags = []
            for w in range(len(sentence)):
                _, neg_f, pos = best[(example, w)]
                tags.append(self.label_names[int(np.argmax(logits[-neg_f][pos]))])
            out.append(tags)
        return out

    def references(self, examples: Dataset) -> list[Any]:
        return self.tag_lists(examples)

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        scheme = self.options.tag_scheme  # seqeval reads BMES as IOBES with M- written I-
        return entity_scores(
            [to_seqeval(tags, scheme) for tags in references],
            [to_seqeval(tags, scheme) for tags in predictions],
            "BIOES" if scheme == "BMES" else scheme,
            self.options.strict,
        )

    def describe(
        self, predictions: list[Any], scores_of: list[np.ndarray], examples: Dataset
    ) -> list[dict[str, Any]]:
        """Tags and entities. From raw text, an entity's `start`/`end` are character offsets into
        the text (with its `text` and `words`); from tokens, `start`/`end` are word indices."""
        raw = self.options.tokens_column not in examples.column_names
        out = []
        for row, tags in enumerate(predictions):
            spans = entity_spans(tags, self.options.tag_scheme)
            if raw:
                text = str(examples[row][self.data.text_column] or "")
                words = self.segment(text)
                entities = [
                    {
                        "type": kind,
                        "text": text[words[first].start : words[last - 1].end],
                        "start": words[first].start,
                        "end": words[last - 1].end,
                        "words": [first, last],
                    }
                    for kind, first, last in spans
                ]
            else:
                entities = [
                    {"type": kind, "start": start, "end": end} for kind, start, end in spans
                ]
            out.append({"tags": tags, "entities": entities})
        return out

    def prediction_files(
        self,
        split: str,
        examples: Dataset,
        features: Dataset,
        predictions: list[Any],
        logits: list[np.ndarray],
    ) -> dict[str, str]:
        """`<split>_predictions.conll`: token, gold tag, predicted tag per line (tab-separated),
        a blank line between sentences (the layout conlleval reads)."""
        lines = []
        words = self.words_of(examples.to_dict())
        for tokens, gold, predicted in zip(
            words, self.tag_lists(examples), predictions, strict=True
        ):
            lines += [f"{t}\t{g}\t{p}" for t, g, p in zip(tokens, gold, predicted, strict=True)]
            lines.append("")
        return {f"{split}_predictions.conll": "\n".join(lines)}


def subtoken_counts(words: list[list[str]], tokenizer: Any) -> list[list[int]]:
    """Sub-tokens of each word, tokenized on its own exactly as inside a pre-split sentence."""
    unique = sorted({w for sentence in words for w in sentence})
    if not unique:
        return [[] for _ in words]
    enc = tokenizer([[w] for w in unique], is_split_into_words=True, add_special_tokens=False)
    size = {w: len(ids) for w, ids in zip(unique, enc["input_ids"], strict=True)}
    return [[size[w] for w in sentence] for sentence in words]


def word_windows(sizes: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of at most `budget` sub-tokens, consecutive ones sharing words
    worth up to `stride` sub-tokens; a single word over budget forms its own (truncated) window.
    """
    windows: list[tuple[int, int]] = []
    start = 0
    while start < len(sizes):
        end, total = start, 0
        while end < len(sizes) and (end == start or total + sizes[end] <= budget):
            total += sizes[end]
            end += 1
        windows.append((start, end))
        if end == len(sizes):
            break
        # Step back over shared words, but leave room for the next new word (always progress).
        nxt, overlap = end, 0
        while (
            nxt - 1 > start
            and overlap + sizes[nxt - 1] <= stride
            and overlap + sizes[nxt - 1] + sizes[end] <= budget
        ):
            nxt -= 1
            overlap += sizes[nxt]
        start = nxt
    return windows


def first_subtokens(word_ids: list[int | None]) -> list[int]:
    """Per position: the word index where a word's first sub-token sits, else -1."""
    out, prev = [], None
    for w in word_ids:
        out.append(w if w is not None and w != prev else -1)
        prev = w
    return out
