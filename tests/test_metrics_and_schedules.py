"""Metrics against hand-computed values; learning-rate schedules at known points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nluft.metrics import classification_scores, confusion_matrix, multilabel_scores
from nluft.optim import lr_multiplier


def test_classification_scores_by_hand() -> None:
    refs = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    s = classification_scores(preds, refs, ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(4 / 6)
    # a: p=2/2 r=2/3; b: p=1/2 r=1/2; c: p=1/2 r=1/1
    assert s["a/precision"] == 1.0 and s["a/recall"] == pytest.approx(2 / 3)
    assert s["a/f1"] == pytest.approx(0.8)
    assert s["c/f1"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s["b/support"] == 2


def test_confusion_matrix_rows_are_references() -> None:
    m = confusion_matrix([1, 1, 0], [0, 1, 0], 2)
    assert m.tolist() == [[1, 1], [0, 1]]


def test_class_never_predicted_scores_zero_not_nan() -> None:
    s = classification_scores([0, 0], [0, 1], ["a", "b"])
    assert s["b/precision"] == 0.0 and s["b/f1"] == 0.0


def test_multilabel_micro_macro() -> None:
    refs = np.array([[1, 0, 1], [0, 1, 0]])
    preds = np.array([[1, 0, 0], [0, 1, 1]])
    s = multilabel_scores(preds, refs, ["x", "y", "z"])
    assert s["micro_precision"] == pytest.approx(2 / 3)
    assert s["micro_recall"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx((1 + 1 + 0) / 3)
    assert s["exact_match"] == 0.0


def test_linear_warmup_then_decay() -> None:
    assert lr_multiplier(0, "linear", 4, 14) == pytest.approx(1 / 5)
    assert lr_multiplier(3, "linear", 4, 14) == pytest.approx(4 / 5)
    assert lr_multiplier(4, "linear", 4, 14) == pytest.approx(1.0)
    assert lr_multiplier(9, "linear", 4, 14) == pytest.approx(0.5)
    assert lr_multiplier(14, "linear", 4, 14) == pytest.approx(0.0)


def test_cosine_and_constant() -> None:
    assert lr_multiplier(5, "cosine", 0, 10) == pytest.approx(0.5)
    assert lr_multiplier(2, "cosine", 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_multiplier(0, "constant_with_warmup", 2, 10) == pytest.approx(1 / 3)
    assert lr_multiplier(7, "constant_with_warmup", 2, 10) == 1.0
    assert lr_multiplier(0, "constant", 2, 10) == 1.0
