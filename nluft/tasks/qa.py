"""Extractive question answering (SQuAD v1.1 / v2.0): sliding windows, n-best decoding, EM/F1.

Examples are flat SQuAD rows (`nluft.data.squad`). A context longer than `data.max_length`
becomes several overlapping windows (`qa.doc_stride` tokens of overlap); each window is labelled
with the answer's token span, or the [CLS] index when the answer is not inside it (and for
unanswerable v2.0 questions). Decoding takes the best valid span over all windows of an example.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from nluft.config import Config, QAConfig
from nluft.errors import ExampleError, NluftError
from nluft.metrics import cmrc_scores, squad_scores
from nluft.segmentation import cjk_ratio
from nluft.tasks.base import Finding

CJK_MAJORITY = 0.5  # qa.metric auto: CMRC 2018 scoring when more of the contexts is CJK

NOT_CONTEXT = (-1, -1)  # offset of question and special tokens: never part of an answer


@dataclass(frozen=True)
class Window:
    """One feature's start/end logits (seq, 2), character offsets and [CLS] position."""

    logits: np.ndarray
    offsets: list[tuple[int, int]]
    cls_index: int


class QATask:
    """`task: qa`. Reads `question`, `context`, `answers` (SQuAD JSON via data.file_format)."""

    name = "qa"
    model_kind = "question_answering"
    has_confusion_matrix = False
    default_metric = "f1"

    def __init__(self, cfg: Config) -> None:
        self.data = cfg.data
        self.options = cfg.qa
        self.label_names: list[str] = []
        self.metric = cfg.qa.metric
        if cfg.qa.doc_stride >= cfg.data.max_length // 2:
            raise NluftError(
                f"qa.doc_stride ({cfg.qa.doc_stride}) must be less than half of data.max_length "
                f"({cfg.data.max_length}); e.g. max_length 384 with doc_stride 128"
            )

    @property
    def columns(self) -> dict[str, str]:
        """Config key -> column the data must have."""
        hint = "data.file_format: squad (SQuAD JSON gives column"
        return {f"{hint} question)": "question", f"{hint} context)": "context"}

    def prepare(self, splits: Mapping[str, Dataset]) -> None:
        for split, dataset in splits.items():
            for row, problem in answer_problems(dataset, self.options):
                raise ExampleError(row, f"{split}: {problem}")
        if self.options.metric == "auto":
            contexts = splits["train"]["context"][:1000]
            self.metric = "cmrc2018" if cjk_ratio(contexts) > CJK_MAJORITY else "squad"

    def check(self, split: str, examples: Dataset, tokenizer: Any) -> list[Finding]:
        """Answers that do not match the context at their offsets, empty texts."""
        rows = examples["_row"] if "_row" in examples.column_names else range(len(examples))
        return [
            Finding("error", split, f"row {rows[row]}: {problem}")
            for row, problem in answer_problems(examples, self.options)
        ]

    # --- encoding and loss -------------------------------------------------------------------

    def encode(self, examples: dict[str, list[Any]], tokenizer: Any) -> dict[str, list[Any]]:
        questions = [str(q or "").lstrip() for q in examples["question"]]
        contexts = [str(c or "") for c in examples["context"]]
        enc = self.tokenize(questions, contexts, tokenizer)
        answers = examples.get("answers")
        features: dict[str, list[Any]] = defaultdict(list)
        for i, ids in enumerate(enc["input_ids"]):
            sample = enc["overflow_to_sample_mapping"][i]
            sequence = enc.sequence_ids(i)
            offsets = [
                tuple(pair) if sequence[k] == 1 else NOT_CONTEXT
                for k, pair in enumerate(enc["offset_mapping"][i])
            ]
            cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                if key in enc:
                    features[key].append(enc[key][i])
            features["offset_mapping"].append([list(pair) for pair in offsets])
            features["cls_index"].append(cls_index)
            features["example_id"].append(sample)
            if answers is not None:
                features["labels"].append(window_label(offsets, answers[sample], cls_index))
        return dict(features)

    def tokenize(self, questions: list[str], contexts: list[str], tokenizer: Any) -> Any:
        """Question + context windows; a question too long for any window is a one-line error."""
        kwargs = {
            "truncation": "only_second",
            "max_length": self.data.max_length,
            "stride": self.options.doc_stride,
            "return_overflowing_tokens": True,
            "return_offsets_mapping": True,
        }
        try:
            return tokenizer(questions, contexts, **kwargs)
        except Exception:  # tokenizers raises its own types; find the example that caused it
            for row, (question, context) in enumerate(zip(questions, contexts, strict=True)):
                try:
                    tokenizer([question], [context], **kwargs)
                except Exception:
                    raise ExampleError(
                        row,
                        f"question {question[:40]!r} leaves no room for context windows; raise "
                        "data.max_length or lower qa.doc_stride",
                    ) from None
            raise

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # labels hold [start, end] per window; collate pads int lists, so read the first two.
        start = torch.nn.functional.cross_entropy(logits[..., 0].float(), labels[:, 0])
        end = torch.nn.functional.cross_entropy(logits[..., 1].float(), labels[:, 1])
        return (start + end) / 2

    # --- decoding and scoring ----------------------------------------------------------------

    def windows_of(self, logits: list[np.ndarray], features: Dataset) -> dict[int, list[Window]]:
        """Each example's windows (features) with their logits."""
        windows: dict[int, list[Window]] = defaultdict(list)
        columns = features.select_columns(["example_id", "offset_mapping", "cls_index"])
        for row, feature in zip(logits, columns, strict=True):
            offsets = [(int(a), int(b)) for a, b in feature["offset_mapping"]]
            windows[feature["example_id"]].append(Window(row, offsets, feature["cls_index"]))
        return windows

    def predict(self, logits: list[np.ndarray], features: Dataset, examples: Dataset) -> list[Any]:
        windows = self.windows_of(logits, features)
        contexts = examples["context"]
        return [decode_answer(contexts[i], windows[i], self.options) for i in range(len(examples))]

    def references(self, examples: Dataset) -> list[Any]:
        return [list(answers["text"]) for answers in examples["answers"]]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        if self.metric == "cmrc2018":
            return cmrc_scores(predictions, references)
        return squad_scores(predictions, references)

    def prediction_files(
        self,
        split: str,
        examples: Dataset,
        features: Dataset,
        predictions: list[Any],
        logits: list[np.ndarray],
    ) -> dict[str, str]:
        """`<split>_predictions.json` (question id -> answer text, what the official SQuAD and
        CMRC scripts read) and, for SQuAD v2.0, `<split>_null_odds.json` (id -> null score minus
        best span score, the official script's --na-prob-file)."""
        ids = [str(i) for i in examples["id"]]
        files = {f"{split}_predictions.json": json.dumps(dict(zip(ids, predictions, strict=True)))}
        if self.options.version_2_with_negative:
            windows = self.windows_of(logits, features)
            contexts = examples["context"]
            odds = {
                ids[i]: best_answer(contexts[i], windows[i], self.options)[1]
                for i in range(len(examples))
            }
            files[f"{split}_null_odds.json"] = json.dumps(odds)
        return files

    def describe(
        self, predictions: list[Any], scores_of: list[np.ndarray], examples: Dataset
    ) -> list[dict[str, Any]]:
        return [{"answer": answer} for answer in predictions]


def window_label(
    offsets: list[tuple[int, int]], answers: dict[str, list[Any]], cls_index: int
) -> list[int]:
    """[start, end] token of the first answer in this window, or [CLS, CLS] when it is not in it."""
    if not answers["text"]:
        return [cls_index, cls_index]
    start_char = int(answers["answer_start"][0])
    span = answer_tokens(offsets, start_char, start_char + len(answers["text"][0]))
    return list(span) if span else [cls_index, cls_index]


def answer_tokens(
    offsets: list[tuple[int, int]], start_char: int, end_char: int
) -> tuple[int, int] | None:
    """First and last context token covering characters [start_char, end_char), if all inside."""
    context = [k for k, (start, _) in enumerate(offsets) if start >= 0]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return None
    first = max(k for k in context if offsets[k][0] <= start_char)
    last = min(k for k in context if offsets[k][1] >= end_char)
    return first, last


def decode_answer(context: str, windows: list[Window], options: QAConfig) -> str:
    """Best span over all windows (n-best starts x ends, max_answer_length); "" for no answer."""
    return best_answer(context, windows, options)[0]


def best_answer(context: str, windows: list[Window], options: QAConfig) -> tuple[str, float]:
    """Best span over all windows (n-best starts x ends, max_answer_length), "" for no answer,
    and the null odds (null score minus the best span's score; v2.0 only, else 0)."""
    best_text, best_score = "", -np.inf
    for window in windows:
        start_logits, end_logits = window.logits[:, 0], window.logits[:, 1]
        starts = np.argsort(-start_logits, kind="stable")[: options.n_best_size]
        ends = np.argsort(-end_logits, kind="stable")[: options.n_best_size]
        for s in starts:
            for e in ends:
                if window.offsets[s][0] < 0 or window.offsets[e][0] < 0:
                    continue
                if e < s or e - s + 1 > options.max_answer_length:
                    continue
                score = float(start_logits[s] + end_logits[e])
                if score > best_score:
                    best_score = score
                    best_text = context[window.offsets[s][0] : window.offsets[e][1]]
    if options.version_2_with_negative and windows:
        null_score = min(float(w.logits[w.cls_index].sum()) for w in windows)
        odds = null_score - best_score if np.isfinite(best_score) else float("inf")
        if odds > options.null_score_diff_threshold:
            return "", odds if np.isfinite(odds) else 1e9
        return best_text, odds
    return best_text, 0.0


def answer_problems(examples: Dataset, options: QAConfig) -> list[tuple[int, str]]:
    """(row, message) for answers that do not match the context, and answerless questions in v1."""
    problems = []
    columns = examples.select_columns(["id", "question", "context", "answers", "is_impossible"])
    for row, example in enumerate(columns):
        where = f"question {example['id']!r}"
        answers = example["answers"]
        if not str(example["question"] or "").strip() or not str(example["context"] or ""):
            problems.append((row, f"{where}: empty question or context"))
        if not answers["text"] and not options.version_2_with_negative:
            problems.append(
                (row, f"{where}: no answer; set qa.version_2_with_negative: true for SQuAD v2.0")
            )
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            found = example["context"][start : start + len(text)]
            if start < 0 or found != text:
                problems.append(
                    (
                        row,
                        f"{where}: answer {text!r} does not match the context at answer_start "
                        f"{start} (found {found!r}); fix answer_start or the text",
                    )
                )
    return problems
