"""Relation extraction: the relation between a marked subject and object in one text.

Each JSONL row has `text`, `subject` and `object` (character spans `{start, end}`, end exclusive,
optional `type`) and a relation label. Typed entity markers (`[E1:PER] ... [/E1]`,
`[E2:ORG] ... [/E2]`) are inserted into the text and added to the tokenizer as special tokens; the
model (`nluft.models.EntityMarkerModel`) classifies the hidden states at the two start markers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from nluft.config import Config
from nluft.errors import ExampleError
from nluft.metrics import relation_scores
from nluft.tasks.base import Finding
from nluft.tasks.classification import prediction_jsonl, softmax, sort_labels

ROLES = {"subject": "E1", "object": "E2"}


def start_marker(role: str, entity_type: str | None = None) -> str:
    return f"[{ROLES[role]}:{entity_type}]" if entity_type else f"[{ROLES[role]}]"


def end_marker(role: str) -> str:
    return f"[/{ROLES[role]}]"


class RelationTask:
    """`task: relation`. Labels are relation names; micro-F1 leaves out relation.negative_label."""

    name = "relation"
    model_kind = "entity_marker_classification"
    has_confusion_matrix = False
    default_metric = "micro_f1"

    def __init__(self, cfg: Config) -> None:
        self.data = cfg.data
        self.options = cfg.relation
        self.label_names: list[str] = []
        self.entity_types: list[str] = []

    @property
    def columns(self) -> dict[str, str]:
        """Config key -> column the data must have."""
        return {
            "data.text_column": self.data.text_column,
            "a 'subject' span per row": "subject",
            "an 'object' span per row": "object",
            "data.label_column": self.data.label_column,
        }

    # --- labels, entity types, markers -------------------------------------------------------

    def prepare(self, splits: Mapping[str, Dataset]) -> None:
        for split, dataset in splits.items():
            for row, problem in self.span_problems(dataset):
                raise ExampleError(row, f"{split}: {problem}")
        train = splits["train"]
        labels = [str(v) for v in train[self.data.label_column]]
        self.label_names = list(self.data.label_names or sort_labels(set(labels)))
        for split, dataset in splits.items():
            for row, value in enumerate(dataset[self.data.label_column]):
                if str(value) not in self.label_names:
                    raise ExampleError(
                        row,
                        f"{split}: relation {value!r} is not in the label set {self.label_names} "
                        "(labels come from the training data or data.label_names)",
                    )
        negative = self.options.negative_label
        if negative is not None and negative not in self.label_names:
            warnings.warn(
                f"relation.negative_label {negative!r} is not a label; micro-F1 counts every "
                "relation (set relation.negative_label: null to silence this)",
                stacklevel=2,
            )
        spans = [*train["subject"], *train["object"]]
        self.entity_types = sorted({str(s["type"]) for s in spans if s.get("type")})

    def marker_tokens(self) -> list[str]:
        """Special tokens to add: untyped markers always, typed ones per entity type."""
        tokens = []
        for role in ROLES:
            tokens += [start_marker(role), end_marker(role)]
            if self.options.typed_markers:
                tokens += [start_marker(role, t) for t in self.entity_types]
        return tokens

    def extend_tokenizer(self, tokenizer: Any) -> None:
        """Add the marker tokens (no-op for a tokenizer exported by a relation run)."""
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.marker_tokens() if t not in vocab]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)

    def model_config(self, tokenizer: Any) -> dict[str, Any]:
        """Token ids of the subject/object start markers, stored in the model config."""
        vocab = tokenizer.get_vocab()
        starts = {role: [start_marker(role)] for role in ROLES}
        for role in ROLES:
            starts[role] += [start_marker(role, t) for t in self.entity_types]
        return {
            f"{role}_marker_ids": [vocab[t] for t in tokens if t in vocab]
            for role, tokens in starts.items()
        }

    # --- checks --------------------------------------------------------------------------------

    def span_problems(self, dataset: Dataset) -> list[tuple[int, str]]:
        columns = dataset.select_columns([self.data.text_column, "subject", "object"])
        problems = []
        for row, example in enumerate(columns):
            problem = span_problem(
                example[self.data.text_column], example["subject"], example["object"]
            )
            if problem:
                problems.append((row, problem))
        return problems

    def check(self, split: str, examples: Dataset, tokenizer: Any) -> list[Finding]:
        """Subject/object spans outside the text or overlapping each other."""
        rows = examples["_row"] if "_row" in examples.column_names else range(len(examples))
        return [
            Finding("error", split, f"row {rows[row]}: {problem}")
            for row, problem in self.span_problems(examples)
        ]

    # --- encoding and loss -------------------------------------------------------------------

    def encode(self, examples: dict[str, list[Any]], tokenizer: Any) -> dict[str, list[Any]]:
        vocab = tokenizer.get_vocab()
        texts = [
            insert_markers(str(text), subject, obj, vocab)
            for text, subject, obj in zip(
                examples[self.data.text_column],
                examples["subject"],
                examples["object"],
                strict=True,
            )
        ]
        markers = {vocab[t] for t in self.marker_tokens() if t in vocab}
        encoded = [fit_length(text, tokenizer, self.data.max_length, markers) for text in texts]
        features: dict[str, list[Any]] = {key: [enc[key] for enc in encoded] for key in encoded[0]}
        if self.data.label_column in examples:  # absent when predicting on raw text
            features["labels"] = [
                self.label_names.index(str(v)) for v in examples[self.data.label_column]
            ]
        return features

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.float(), labels)

    # --- decoding and scoring ----------------------------------------------------------------

    def predict(self, logits: list[np.ndarray], features: Dataset, examples: Dataset) -> list[Any]:
        return [int(np.argmax(row)) for row in logits]

    def references(self, examples: Dataset) -> list[Any]:
        return [self.label_names.index(str(v)) for v in examples[self.data.label_column]]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return relation_scores(
            predictions, references, self.label_names, self.options.negative_label
        )

    def describe(
        self, predictions: list[Any], scores_of: list[np.ndarray], examples: Dataset
    ) -> list[dict[str, Any]]:
        out = []
        for pred, row in zip(predictions, scores_of, strict=True):
            probs = softmax(row)
            scores = {
                name: round(float(p), 6) for name, p in zip(self.label_names, probs, strict=True)
            }
            label = self.label_names[pred]
            out.append({"label": label, "score": scores[label], "scores": scores})
        return out

    def prediction_files(
        self,
        split: str,
        examples: Dataset,
        features: Dataset,
        predictions: list[Any],
        logits: list[np.ndarray],
    ) -> dict[str, str]:
        """`<split>_predictions.jsonl`: id (or row), gold, predicted and the scores per example."""
        gold = [str(v) for v in examples[self.data.label_column]]
        described = self.describe(predictions, logits, examples)
        return {f"{split}_predictions.jsonl": prediction_jsonl(examples, gold, described)}


def span_problem(text: Any, subject: Any, obj: Any) -> str | None:
    """Why a subject/object pair is unusable (outside the text, malformed, overlapping), or None."""
    length = len(str(text or ""))
    for role, span in (("subject", subject), ("object", obj)):
        if not isinstance(span, dict) or not all(
            isinstance(span.get(k), int) for k in ("start", "end")
        ):
            return f"{role} must be an object with integer 'start' and 'end' (got {span!r})"
        if not 0 <= span["start"] < span["end"] <= length:
            return (
                f"{role} span [{span['start']}, {span['end']}) is outside the text "
                f"(length {length}); spans are character offsets, end exclusive"
            )
    if subject["start"] < obj["end"] and obj["start"] < subject["end"]:
        return (
            f"subject [{subject['start']}, {subject['end']}) and object "
            f"[{obj['start']}, {obj['end']}) overlap"
        )
    return None


def insert_markers(
    text: str, subject: dict[str, Any], obj: dict[str, Any], vocab: Mapping[str, int]
) -> str:
    """The text with start/end markers around both spans (typed if the tokenizer has the type)."""
    edits = []
    for role, span in (("subject", subject), ("object", obj)):
        typed = start_marker(role, span.get("type"))
        start = typed if typed in vocab else start_marker(role)
        edits += [(span["start"], f"{start} "), (span["end"], f" {end_marker(role)}")]
    # Insert from the right so earlier offsets stay valid; at equal offsets an end marker
    # (closing the left entity) goes before the start marker of the next one.
    for position, marker in sorted(edits, key=lambda e: (e[0], e[1].startswith("[")), reverse=True):
        text = text[:position] + marker + text[position:]
    return text


def fit_length(
    text: str, tokenizer: Any, max_length: int, marker_ids: set[int]
) -> dict[str, list[int]]:
    """Tokenize; when too long, cut the text to a window around the markers (not just the head).

    When subject and object lie farther apart than one window holds, two windows are joined: one
    from the first entity's start marker on, one ending at the second entity's end marker, so both
    start markers (what the model classifies) are always kept.
    """
    enc = tokenizer(text, return_offsets_mapping=True)
    if len(enc["input_ids"]) > max_length:
        content = [k for k, seq in enumerate(enc.sequence_ids()) if seq == 0]
        budget = max_length - tokenizer.num_special_tokens_to_add()
        marked = [i for i, k in enumerate(content) if enc["input_ids"][k] in marker_ids]
        first, last = (marked[0], marked[-1]) if marked else (0, 0)
        if last - first >= budget:
            return join_windows(enc, content, marked, budget)
        lo = max(0, min(first, (first + last) // 2 - budget // 2, len(content) - budget))
        window = content[lo : lo + budget]
        offsets = enc["offset_mapping"]
        text = text[offsets[window[0]][0] : offsets[window[-1]][1]]
        enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    enc.pop("offset_mapping")
    return {key: list(value) for key, value in enc.items()}


def join_windows(
    enc: Any, content: list[int], marked: list[int], budget: int
) -> dict[str, list[int]]:
    """Special tokens plus two content windows: from the first marker on, and up to the last
    marker (or from the second entity's start marker when that entity alone is too long)."""
    half = budget // 2
    second_start = marked[2] if len(marked) > 2 else marked[-1]
    head = range(marked[0], marked[0] + half)
    tail_start = min(second_start, marked[-1] + 1 - (budget - half))
    tail_start = max(tail_start, marked[0] + half)  # no token twice
    tail = range(tail_start, tail_start + budget - half)
    keep = [content[i] for i in (*head, *tail)]
    specials = [k for k, seq in enumerate(enc.sequence_ids()) if seq is None]
    positions = [k for k in specials if k < content[0]] + keep
    positions += [k for k in specials if k > content[-1]]
    enc.pop("offset_mapping")
    return {key: [value[k] for k in positions] for key, value in enc.items()}
