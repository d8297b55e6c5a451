"""The protocol every task implements: labels, encoding, loss, decoding and scoring."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from datasets import Dataset

# Which transformers Auto class builds the model for each kind of head.
MODEL_KINDS = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "question_answering": "AutoModelForQuestionAnswering",
    # Relation extraction's head on entity-marker states; nluft.models builds it itself.
    "entity_marker_classification": "EntityMarkerModel",
}


@dataclass(frozen=True)
class Finding:
    """One problem `nluft check-data` reports; `where` is `file:line` or a split name.

    A task's `check` may name the split as `where` plus the example's `row` in it (and a `token`);
    the data layer then turns that into the file and line.
    """

    level: Literal["error", "warning"]
    where: str
    message: str
    row: int | None = None
    token: int | None = None


class Task(Protocol):
    """One NLU task. Built from the config; `prepare` fixes labels before anything is encoded.

    `encode` runs under `datasets.map(batched=True)` and returns one or more features per
    example; `predict` and `score` are pure, so results do not depend on how many ranks ran eval.
    """

    name: str
    model_kind: str
    default_metric: str
    label_names: list[str]
    # Whether one label per example makes a confusion matrix worth saving with the results.
    has_confusion_matrix: bool

    def prepare(self, splits: Mapping[str, Dataset]) -> None:
        """Read the label set (and anything else fixed by the training data)."""

    def encode(self, examples: dict[str, list[Any]], tokenizer: Any) -> dict[str, list[Any]]:
        """Tokenize a batch of raw examples into model features with `labels`."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean training loss of a batch."""

    def predict(self, logits: list[np.ndarray], features: Dataset, examples: Dataset) -> list[Any]:
        """One prediction per example from the logits of its features (in feature order)."""

    def references(self, examples: Dataset) -> list[Any]:
        """The gold answers of the examples, in the form `score` takes."""

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        """Metrics of the predictions; `default_metric` is one of the keys."""

    def describe(
        self, predictions: list[Any], scores_of: list[np.ndarray], examples: Dataset
    ) -> list[dict[str, Any]]:
        """Human-readable predictions (label names and scores) for `nluft predict`."""

    def prediction_files(
        self,
        split: str,
        examples: Dataset,
        features: Dataset,
        predictions: list[Any],
        logits: list[np.ndarray],
    ) -> dict[str, str]:
        """File name -> content of a split's predictions in the task's standard format."""
