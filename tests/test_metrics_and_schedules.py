"""Metrics against hand-computed values and scikit-learn; schedules against transformers."""

from __future__ import annotations

import numpy as np
import pytest

from nluft.metrics import (
    classification_scores,
    confusion_matrix,
    multilabel_scores,
    relation_scores,
)


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


# --- scikit-learn as the oracle, on random predictions (some classes never predicted) ----------

SEEDS = range(6)


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_scores_equal_scikit_learn(seed: int) -> None:
    from sklearn import metrics as sk

    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    refs = rng.integers(0, k, size=int(rng.integers(1, 40))).tolist()
    preds = rng.integers(0, k - (seed % 2), size=len(refs)).tolist()  # odd seeds: one class unused
    names = [f"c{i}" for i in range(k)]
    s = classification_scores(preds, refs, names)
    labels = list(range(k))
    p, r, f, support = sk.precision_recall_fscore_support(
        refs, preds, labels=labels, average=None, zero_division=0
    )
    assert s["accuracy"] == pytest.approx(sk.accuracy_score(refs, preds))
    for i, name in enumerate(names):
        assert (s[f"{name}/precision"], s[f"{name}/recall"]) == pytest.approx((p[i], r[i]))
        assert (s[f"{name}/f1"], s[f"{name}/support"]) == pytest.approx((f[i], support[i]))
    macro = sk.precision_recall_fscore_support(
        refs, preds, labels=labels, average="macro", zero_division=0
    )
    assert (s["macro_precision"], s["macro_recall"], s["macro_f1"]) == pytest.approx(macro[:3])
    assert (
        confusion_matrix(preds, refs, k).tolist()
        == sk.confusion_matrix(refs, preds, labels=labels).tolist()
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_scores_equal_scikit_learn(seed: int) -> None:
    from sklearn import metrics as sk

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 30)), int(rng.integers(2, 6)))
    refs, preds = rng.random(shape) < 0.4, rng.random(shape) < 0.4
    s = multilabel_scores(preds, refs, [f"l{i}" for i in range(shape[1])])
    assert s["exact_match"] == pytest.approx(sk.accuracy_score(refs, preds))
    for avg in ("micro", "macro"):
        assert s[f"{avg}_f1"] == pytest.approx(
            sk.f1_score(refs, preds, average=avg, zero_division=0)
        )
    assert s["micro_precision"] == pytest.approx(
        sk.precision_score(refs, preds, average="micro", zero_division=0)
    )
    assert s["micro_recall"] == pytest.approx(
        sk.recall_score(refs, preds, average="micro", zero_division=0)
    )
    per_label = sk.f1_score(refs, preds, average=None, zero_division=0)
    assert [s[f"l{i}/f1"] for i in range(shape[1])] == pytest.approx(per_label.tolist())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("negative", ["no_relation", None])
def test_relation_scores_equal_scikit_learn_over_positive_labels(
    seed: int, negative: str | None
) -> None:
    """TACRED micro P/R/F1 is scikit-learn's micro average over every label but the negative."""
    from sklearn import metrics as sk

    rng = np.random.default_rng(seed)
    names = ["no_relation", "born_in", "works_for", "lives_in"][: int(rng.integers(2, 5))]
    refs = rng.integers(0, len(names), size=int(rng.integers(1, 50))).tolist()
    preds = rng.integers(0, len(names), size=len(refs)).tolist()
    s = relation_scores(preds, refs, names, negative)
    positive = [i for i, n in enumerate(names) if n != negative]
    p, r, f, _ = sk.precision_recall_fscore_support(
        refs, preds, labels=positive, average="micro", zero_division=0
    )
    assert (s["micro_precision"], s["micro_recall"], s["micro_f1"]) == pytest.approx((p, r, f))
    assert s["accuracy"] == pytest.approx(sk.accuracy_score(refs, preds))
    per = sk.precision_recall_fscore_support(
        refs, preds, labels=positive, average=None, zero_division=0
    )
    for j, i in enumerate(positive):
        got = [s[f"{names[i]}/{k}"] for k in ("precision", "recall", "f1", "support")]
        assert got == pytest.approx([per[0][j], per[1][j], per[2][j], per[3][j]])


# --- learning-rate schedules: the Trainer's, from transformers ---------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "constant_with_warmup"])
@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 12), (4, 5)])
def test_schedule_is_transformers_get_scheduler(kind: str, warmup: int, total: int) -> None:
    """Every step's learning rate equals the Trainer's for the same kind, warmup and total."""
    import torch
    from transformers import get_scheduler

    from nluft.config import Plan, TrainConfig
    from nluft.optim import build_scheduler

    train = TrainConfig(lr_scheduler_type=kind, learning_rate=2e-3)
    plan = Plan(1, 96, 8, 8, 12, total, total / 12, warmup)

    def rates(make):  # type: ignore[no-untyped-def]
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
        sched = make(opt)
        out = []
        for _ in range(total + 1):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    ours = rates(lambda opt: build_scheduler(opt, train, plan))
    oracle = rates(lambda opt: get_scheduler(kind, opt, warmup, total))
    assert ours == pytest.approx(oracle, abs=1e-12)
    if kind == "linear":
        assert ours[-1] == 0.0 and max(ours) == pytest.approx(2e-3)
