"""Sequence classification: single sentence or sentence pair, multi-class or multi-label."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Sequence

from nluft.config import Config
from nluft.errors import ExampleError
from nluft.metrics import classification_scores, multilabel_scores
from nluft.tasks.base import Finding


class ClassificationTask:
    """`task: classification`. Labels are names; ids follow `data.label_names` or sorted order."""

    name = "classification"
    model_kind = "sequence_classification"

    def __init__(self, cfg: Config) -> None:
        self.data = cfg.data
        self.options = cfg.classification
        self.multi_label = cfg.classification.multi_label
        self.default_metric = "micro_f1" if self.multi_label else "accuracy"
        self.has_confusion_matrix = not self.multi_label  # one label per example
        self.label_names: list[str] = []
        self.id_names: list[str] = []  # ClassLabel names when the label column stores ids
        self.class_weights: torch.Tensor | None = None

    @property
    def columns(self) -> dict[str, str]:
        """Config key -> column the data must have."""
        cols = {"data.text_column": self.data.text_column}
        if self.data.text_pair_column:
            cols["data.text_pair_column"] = self.data.text_pair_column
        cols["data.label_column"] = self.data.label_column
        return cols

    @property
    def input_columns(self) -> list[str]:
        """Columns that make up the model input (duplicate checks compare these)."""
        return [col for key, col in self.columns.items() if key != "data.label_column"]

    # --- labels ------------------------------------------------------------------------------

    def prepare(self, splits: Mapping[str, Dataset]) -> None:
        train = splits["train"]
        feature = train.features[self.data.label_column]
        inner = getattr(feature, "feature", feature)  # Sequence(ClassLabel) for multi-label
        self.id_names = list(inner.names) if isinstance(inner, ClassLabel) else []
        if self.data.label_names:
            self.label_names = list(self.data.label_names)
        elif isinstance(feature, ClassLabel):
            self.label_names = list(feature.names)
        elif isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel):
            self.label_names = list(feature.feature.names)
        else:
            seen = {
                name for value in train[self.data.label_column] for name in self.names_of(value)
            }
            self.label_names = sort_labels(seen)
        if len(self.label_names) < 2 and not self.multi_label:
            raise ExampleError(0, f"only one label ({self.label_names}) in the training data")
        for split, dataset in splits.items():
            self.check_labels(split, dataset)
        self.class_weights = self.build_class_weights(train)

    def names_of(self, value: Any) -> list[str]:
        """The label name(s) of one raw label value (ClassLabel ids become names)."""
        if self.multi_label:
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            return [self.name_of(v) for v in (value or [])]
        return [self.name_of(value)]

    def name_of(self, value: Any) -> str:
        if self.id_names and isinstance(value, int) and 0 <= value < len(self.id_names):
            return self.id_names[value]
        return str(value)

    def check_labels(self, split: str, dataset: Dataset) -> None:
        known = set(self.label_names)
        for row, value in enumerate(dataset[self.data.label_column]):
            if value is None:
                raise ExampleError(
                    row, f"{split}: empty label in column '{self.data.label_column}'"
                )
            for name in self.names_of(value):
                if name not in known:
                    raise ExampleError(
                        row,
                        f"{split}: label {name!r} is not in the label set {self.label_names} "
                        "(labels come from the training data or data.label_names)",
                    )

    def check(self, split: str, examples: Dataset, tokenizer: Any) -> list[Finding]:
        """Empty labels and labels outside the label set, each at its example."""
        known, column = set(self.label_names), self.data.label_column
        findings = []
        for row, value in enumerate(examples[column]):
            if value is None:
                findings.append(
                    Finding("error", split, f"empty label in column {column!r}", row=row)
                )
                continue
            for name in self.names_of(value):
                if name not in known:
                    message = f"label {name!r} is not in the label set {self.label_names}"
                    findings.append(Finding("error", split, message, row=row))
        return findings

    def label_counts(self, examples: Dataset) -> dict[str, int]:
        """Examples per label name (the distribution check-data reports)."""
        values = [v for v in examples[self.data.label_column] if v is not None]
        return dict(Counter(name for value in values for name in self.names_of(value)))

    def build_class_weights(self, train: Dataset) -> torch.Tensor | None:
        weights = self.options.class_weights
        if weights is None:
            return None
        if weights == "balanced":
            counts = Counter(
                name for value in train[self.data.label_column] for name in self.names_of(value)
            )
            total, k = sum(counts.values()), len(self.label_names)
            weights = [total / (k * max(1, counts[name])) for name in self.label_names]
        if len(weights) != len(self.label_names):
            raise ExampleError(
                0,
                f"classification.class_weights has {len(weights)} values for "
                f"{len(self.label_names)} labels {self.label_names}",
            )
        return torch.tensor(weights, dtype=torch.float32)

    # --- encoding and loss -------------------------------------------------------------------

    def encode(self, examples: dict[str, list[Any]], tokenizer: Any) -> dict[str, list[Any]]:
        texts = [text_or_empty(t) for t in examples[self.data.text_column]]
        pairs = None
        if self.data.text_pair_column:
            pairs = [text_or_empty(t) for t in examples[self.data.text_pair_column]]
        enc = tokenizer(texts, pairs, truncation=True, max_length=self.data.max_length)
        features = {key: list(value) for key, value in enc.items()}
        if self.data.label_column in examples:  # absent when predicting on raw text
            features["labels"] = [self.label_target(v) for v in examples[self.data.label_column]]
        return features

    def label_target(self, value: Any) -> Any:
        ids = [self.label_names.index(name) for name in self.names_of(value)]
        if not self.multi_label:
            return ids[0]
        target = [0.0] * len(self.label_names)
        for i in ids:
            target[i] = 1.0
        return target

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        if self.multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels.float(), pos_weight=weight
            )
        return torch.nn.functional.cross_entropy(logits, labels, weight=weight)

    # --- decoding and scoring ----------------------------------------------------------------

    def predict(self, logits: list[np.ndarray], features: Dataset, examples: Dataset) -> list[Any]:
        if self.multi_label:
            return [(sigmoid(row) >= self.options.threshold).astype(int).tolist() for row in logits]
        return [int(np.argmax(row)) for row in logits]

    def references(self, examples: Dataset) -> list[Any]:
        return [self.label_target(v) for v in examples[self.data.label_column]]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        if self.multi_label:
            return multilabel_scores(np.array(predictions), np.array(references), self.label_names)
        return classification_scores(predictions, references, self.label_names)

    def describe(
        self, predictions: list[Any], scores_of: list[np.ndarray], examples: Dataset
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for pred, row in zip(predictions, scores_of, strict=True):
            probs = sigmoid(row) if self.multi_label else softmax(row)
            scores = {
                name: round(float(p), 6) for name, p in zip(self.label_names, probs, strict=True)
            }
            if self.multi_label:
                labels = [self.label_names[i] for i, on in enumerate(pred) if on]
                out.append({"labels": labels, "scores": scores})
            else:
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
        golds = [self.names_of(v) for v in examples[self.data.label_column]]
        gold = golds if self.multi_label else [names[0] for names in golds]
        described = self.describe(predictions, logits, examples)
        return {f"{split}_predictions.jsonl": prediction_jsonl(examples, gold, described)}


def prediction_jsonl(examples: Dataset, gold: list[Any], described: list[dict[str, Any]]) -> str:
    """One JSON line per example: `id` (or `row`, its position in the file), gold, predicted,
    scores; `described` is the task's `describe` output."""
    key, ids = ("id", examples["id"]) if "id" in examples.column_names else ("row", None)
    rows = examples["_row"] if "_row" in examples.column_names else list(range(len(examples)))
    lines = []
    for i, (g, out) in enumerate(zip(gold, described, strict=True)):
        predicted = out.get("label", out.get("labels"))
        record = {key: ids[i] if ids else rows[i], "gold": g, "predicted": predicted}
        lines.append(json.dumps({**record, "scores": out["scores"]}, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def sort_labels(names: set[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def text_or_empty(value: Any) -> str:
    return "" if value is None else str(value)


def softmax(row: np.ndarray) -> np.ndarray:
    shifted = np.exp(row - row.max())
    return shifted / shifted.sum()


def sigmoid(row: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-row))
