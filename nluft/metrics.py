"""Pure metric functions on label ids: no torch, no I/O, order-independent."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

PUNCTUATION = frozenset(string.punctuation)


def confusion_matrix(preds: Sequence[int], refs: Sequence[int], num_labels: int) -> np.ndarray:
    """Counts with rows = reference label, columns = predicted label."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(refs, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return matrix


def safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def f1_from(precision: float, recall: float) -> float:
    return safe_div(2 * precision * recall, precision + recall)


def classification_scores(
    preds: Sequence[int], refs: Sequence[int], label_names: Sequence[str]
) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1, and per-class precision/recall/F1/support."""
    matrix = confusion_matrix(preds, refs, len(label_names))
    true_pos = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    scores: dict[str, float] = {"accuracy": safe_div(true_pos.sum(), matrix.sum())}
    precisions, recalls, f1s = [], [], []
    for i, name in enumerate(label_names):
        p, r = safe_div(true_pos[i], predicted[i]), safe_div(true_pos[i], support[i])
        precisions.append(p)
        recalls.append(r)
        f1s.append(f1_from(p, r))
        scores[f"{name}/precision"], scores[f"{name}/recall"], scores[f"{name}/f1"] = p, r, f1s[-1]
        scores[f"{name}/support"] = float(support[i])
    scores["macro_precision"] = float(np.mean(precisions))
    scores["macro_recall"] = float(np.mean(recalls))
    scores["macro_f1"] = float(np.mean(f1s))
    return scores


def multilabel_scores(
    preds: np.ndarray, refs: np.ndarray, label_names: Sequence[str]
) -> dict[str, float]:
    """Micro/macro F1 and exact-match accuracy for 0/1 matrices of shape (examples, labels)."""
    preds, refs = np.asarray(preds, dtype=bool), np.asarray(refs, dtype=bool)
    true_pos = (preds & refs).sum(axis=0).astype(float)
    pred_pos, real_pos = preds.sum(axis=0), refs.sum(axis=0)
    micro_p = safe_div(true_pos.sum(), pred_pos.sum())
    micro_r = safe_div(true_pos.sum(), real_pos.sum())
    scores = {
        "exact_match": float((preds == refs).all(axis=1).mean()) if len(refs) else 0.0,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": f1_from(micro_p, micro_r),
    }
    f1s = []
    for i, name in enumerate(label_names):
        p, r = safe_div(true_pos[i], pred_pos[i]), safe_div(true_pos[i], real_pos[i])
        f1s.append(f1_from(p, r))
        scores[f"{name}/f1"] = f1s[-1]
    scores["macro_f1"] = float(np.mean(f1s)) if f1s else 0.0
    return scores


SEQEVAL_SCHEMES = {"BIO": "IOB2", "IOB1": "IOB1", "BIOES": "IOBES"}


def entity_scores(
    refs: Sequence[Sequence[str]],
    preds: Sequence[Sequence[str]],
    tag_scheme: str = "BIO",
    strict: bool = False,
) -> dict[str, float]:
    """Entity-level micro precision/recall/F1, macro F1, token accuracy, and per-type scores.

    seqeval's default mode reads chunks like conlleval (an I- after O starts an entity); strict
    mode counts only entities that follow `tag_scheme` exactly.
    """
    import seqeval.scheme
    from seqeval.metrics import accuracy_score, classification_report

    options: dict = {
        "mode": "strict",
        "scheme": getattr(seqeval.scheme, SEQEVAL_SCHEMES[tag_scheme]),
    }
    report = classification_report(
        [list(r) for r in refs],
        [list(p) for p in preds],
        output_dict=True,
        zero_division=0,
        **(options if strict else {}),
    )
    micro = report.pop("micro avg")
    report.pop("weighted avg")
    report.pop("macro avg")
    scores = {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score([list(r) for r in refs], [list(p) for p in preds]))
        if any(refs)
        else 0.0,
    }
    per_type = {name: float(row["f1-score"]) for name, row in report.items()}
    scores["macro_f1"] = float(np.mean(list(per_type.values()))) if per_type else 0.0
    for name, row in sorted(report.items()):
        scores[f"{name}/precision"] = float(row["precision"])
        scores[f"{name}/recall"] = float(row["recall"])
        scores[f"{name}/f1"] = float(row["f1-score"])
        scores[f"{name}/support"] = float(row["support"])
    return scores


# --- extractive QA: the official SQuAD v1.1 / v2.0 evaluation ------------------------------

SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace (official)."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(SQUAD_ARTICLES.sub(" ", text).split())


def squad_exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def squad_f1(gold: str, pred: str) -> float:
    """Token-overlap F1 of normalised answers; an empty side scores 1 only if both are empty."""
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    return f1_from(same / len(pred_tokens), same / len(gold_tokens))


def squad_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Exact match and F1 in percent (max over gold answers), with HasAns/NoAns breakdowns.

    A question without gold answers (SQuAD v2.0) has the gold answer "", as in the official script.
    """
    exact, f1, has_answer = [], [], []
    for pred, golds in zip(predictions, references, strict=True):
        texts = [g for g in golds if normalize_answer(g)] or [""]
        exact.append(max(squad_exact(g, pred) for g in texts))
        f1.append(max(squad_f1(g, pred) for g in texts))
        has_answer.append(bool(golds))
    scores = {"exact_match": percent(exact), "f1": percent(f1), "total": float(len(exact))}
    for name, wanted in (("HasAns", True), ("NoAns", False)):
        part = [i for i, has in enumerate(has_answer) if has == wanted]
        if part:
            scores[f"{name}_exact"] = percent([exact[i] for i in part])
            scores[f"{name}_f1"] = percent([f1[i] for i in part])
            scores[f"{name}_total"] = float(len(part))
    return scores


def percent(values: Sequence[float]) -> float:
    return 100.0 * float(np.mean(values)) if len(values) else 0.0


# --- Chinese extractive QA: the official CMRC 2018 evaluation (cmrc2018_evaluate.py) ---------

# The official script's punctuation list. Its "……" is two characters, so it never matches one
# character and an ellipsis is kept, as in the official scores.
CMRC_PUNCTUATION = frozenset(
    ["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“",
     "”", "；", "’", "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』"]
)  # fmt: skip
CMRC_HAN = re.compile("[\u4e00-\u9fa5]")  # the script's test for a Chinese character
# nltk.word_tokenize on the non-Chinese runs: words and numbers ("3.5", "1,000") are tokens, any
# other non-space character is a token of its own (contractions aside, which answers rarely hold).
CMRC_WORDS = re.compile(r"\w+(?:[.,]\w+)*|[^\w\s]")


def cmrc_segments(text: str) -> list[str]:
    """CMRC 2018's mixed segmentation with punctuation removed: each Chinese character a token,
    the other runs split into words; lower-cased and stripped first."""
    segments: list[str] = []
    run = ""
    for ch in text.lower().strip():
        if ch in CMRC_PUNCTUATION:
            continue
        if CMRC_HAN.match(ch):
            segments += CMRC_WORDS.findall(run)
            run = ""
            segments.append(ch)
        else:
            run += ch
    return segments + CMRC_WORDS.findall(run)


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common contiguous run of tokens (the script's find_lcs)."""
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def cmrc_f1(gold: str, pred: str) -> float:
    gold_segments, pred_segments = cmrc_segments(gold), cmrc_segments(pred)
    common = longest_common_run(gold_segments, pred_segments)
    if common == 0:
        return 0.0
    return f1_from(common / len(pred_segments), common / len(gold_segments))


def cmrc_exact(gold: str, pred: str) -> int:
    """Equal after lower-casing, stripping and removing the punctuation (inner spaces count)."""

    def clean(text: str) -> str:
        return "".join(ch for ch in text.lower().strip() if ch not in CMRC_PUNCTUATION)

    return int(clean(gold) == clean(pred))


def cmrc_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """CMRC 2018 EM and F1 in percent, max over gold answers. A question without gold answers
    (not in CMRC 2018 itself) scores 1 exactly when the prediction is empty, as in SQuAD v2.0."""
    exact, f1 = [], []
    for pred, golds in zip(predictions, references, strict=True):
        if not golds:
            exact.append(int(not pred.strip()))
            f1.append(float(not pred.strip()))
            continue
        exact.append(max(cmrc_exact(g, pred) for g in golds))
        f1.append(max(cmrc_f1(g, pred) for g in golds))
    return {"exact_match": percent(exact), "f1": percent(f1), "total": float(len(exact))}


# --- relation extraction ---------------------------------------------------------------------


def relation_scores(
    preds: Sequence[int], refs: Sequence[int], label_names: Sequence[str], negative: str | None
) -> dict[str, float]:
    """Micro P/R/F1 over the relations other than `negative` (TACRED-style), per-relation P/R/F1.

    A prediction counts as correct only if it names the gold relation and that relation is not the
    negative label; predicting the negative label is never a positive.
    """
    neg = label_names.index(negative) if negative in label_names else -1
    preds_a, refs_a = np.asarray(preds, dtype=np.int64), np.asarray(refs, dtype=np.int64)
    correct = (preds_a == refs_a) & (refs_a != neg)
    micro_p = safe_div(correct.sum(), (preds_a != neg).sum())
    micro_r = safe_div(correct.sum(), (refs_a != neg).sum())
    scores = {
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": f1_from(micro_p, micro_r),
        "accuracy": float((preds_a == refs_a).mean()) if len(refs_a) else 0.0,
    }
    for i, name in enumerate(label_names):
        if i == neg:
            continue
        hit = float(((preds_a == i) & (refs_a == i)).sum())
        p, r = safe_div(hit, (preds_a == i).sum()), safe_div(hit, (refs_a == i).sum())
        scores[f"{name}/precision"], scores[f"{name}/recall"] = p, r
        scores[f"{name}/f1"], scores[f"{name}/support"] = f1_from(p, r), float((refs_a == i).sum())
    return scores
