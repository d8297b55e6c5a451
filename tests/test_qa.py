"""Extractive QA: official SQuAD EM/F1, n-best decoding, long contexts, SQuAD files, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, nluft

from nluft.config import QAConfig, load_config
from nluft.data import build_data
from nluft.errors import NluftError
from nluft.metrics import normalize_answer, squad_f1, squad_scores
from nluft.models import build_tokenizer
from nluft.tasks import build_task
from nluft.tasks.qa import Window, decode_answer

FIXTURES = ROOT / "tests" / "fixtures" / "qa"

# --- the official evaluation -------------------------------------------------------------------


def test_normalisation_drops_case_punctuation_articles_and_extra_space() -> None:
    assert normalize_answer("  The Eiffel-Tower,  in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre", "articles only as whole words"


def test_exact_match_and_f1_by_hand() -> None:
    scores = squad_scores(
        ["the big red dog", "Red dog barked", "Paris.", "1996"],
        [["Big red dog!"], ["the big red dog"], ["paris", "in Paris"], ["in 1995"]],
    )
    # F1 per question: 1, 2/3 (red, dog common: P = R = 2/3), 1 (max over golds), 0.
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert squad_f1("in 1995", "1995 in") == 1.0, "bag of tokens, order ignored"


def test_no_answer_questions_score_as_in_squad_v2() -> None:
    scores = squad_scores(["", "Kelmira", "", "the"], [[], [], ["Kelmira"], ["The"]])
    # "" vs no gold: 1; text vs no gold: 0; "" vs gold: 0; a gold that normalises to "" is no gold.
    assert scores["exact_match"] == pytest.approx(50.0) and scores["f1"] == pytest.approx(50.0)
    assert scores["HasAns_total"] == 2 and scores["NoAns_total"] == 2
    assert scores["HasAns_exact"] == 50.0 and scores["NoAns_exact"] == 50.0


# --- decoding on hand-made logits ----------------------------------------------------------------

CONTEXT = "Alva was born in Kelmira in 1996."
# Token 0 is [CLS], 1-2 question tokens, then context tokens with character offsets.
OFFSETS = [(-1, -1), (-1, -1), (-1, -1), (0, 4), (5, 8), (9, 13), (14, 16), (17, 24), (25, 27)]
OFFSETS += [(28, 32)]


def logits_with(starts: dict[int, float], ends: dict[int, float]) -> np.ndarray:
    out = np.zeros((len(OFFSETS), 2), dtype=np.float32)
    for k, v in starts.items():
        out[k, 0] = v
    for k, v in ends.items():
        out[k, 1] = v
    return out


def test_decoding_skips_question_tokens_and_reversed_or_too_long_spans() -> None:
    options = QAConfig(max_answer_length=2, n_best_size=5)
    # Best start is a question token; 9->6 is reversed; 3->6 is 4 tokens long: only 7->7 is left.
    logits = logits_with({1: 9, 9: 8, 3: 7, 7: 5}, {2: 9, 6: 8, 7: 4})
    assert decode_answer(CONTEXT, [Window(logits, OFFSETS, 0)], options) == "Kelmira"


def test_n_best_size_limits_the_candidates() -> None:
    logits = logits_with({9: 6, 7: 1}, {4: 6, 7: 1})  # the top pair is reversed
    window = [Window(logits, OFFSETS, 0)]
    assert decode_answer(CONTEXT, window, QAConfig(n_best_size=2)) == "Kelmira"
    assert decode_answer(CONTEXT, window, QAConfig(n_best_size=1)) == "", "no valid span left"


def test_null_threshold_decides_no_answer_in_v2_only() -> None:
    logits = logits_with({0: 3, 7: 2}, {0: 3, 7: 2})  # null 6 vs best span 4
    window = [Window(logits, OFFSETS, 0)]
    assert decode_answer(CONTEXT, window, QAConfig(version_2_with_negative=True)) == ""
    loose = QAConfig(version_2_with_negative=True, null_score_diff_threshold=2.5)
    assert decode_answer(CONTEXT, window, loose) == "Kelmira"
    assert decode_answer(CONTEXT, window, QAConfig()) == "Kelmira", "v1.1 always answers"


# --- SQuAD files and long contexts ------------------------------------------------------------


def squad_config(tmp_path: Path, model_dir: Path, files: dict[str, Path], **qa: object) -> Path:
    cfg = {
        "task": "qa",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(model_dir)},
        "data": {
            **{f"{split}_file": str(path) for split, path in files.items()},
            "max_length": 32,
            "cache_dir": str(tmp_path / "cache"),
            "validation_split_percentage": 0,
            "test_split_percentage": 0,
        },
        "qa": {"doc_stride": 8, **qa},
    }
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def squad_file(path: Path, paragraphs: list[dict], version: str = "1.1") -> Path:
    document = {"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(document, indent=2))
    return path


def load(config: Path):
    cfg = load_config(config)
    task = build_task(cfg)
    return build_data(cfg, task, build_tokenizer(cfg.model), True, lambda: None), task


def test_answer_in_a_later_window_is_labelled_and_found(tmp_path: Path, minilm_dir: Path) -> None:
    filler = " ".join(f"Field {i} grows barley and oats." for i in range(12))
    context = f"{filler} The old mill stands in Brannock today."
    start = context.index("Brannock")
    question = {
        "id": "q1",
        "question": "Where does the old mill stand?",
        "answers": [{"text": "Brannock", "answer_start": start}],
    }
    train = squad_file(tmp_path / "train.json", [{"context": context, "qas": [question]}])
    data, task = load(squad_config(tmp_path, minilm_dir, {"train": train}))
    features = data.features["train"]
    assert len(features) > 3 and set(features["example_id"]) == {0}
    labels = features["labels"]
    assert labels[0] == [0, 0], "the first window does not hold the answer: [CLS]"
    inside = [i for i, (s, e) in enumerate(labels) if s > 0]
    assert inside and inside[0] > 0
    # Logits that point at the labelled tokens of a later window, small noise elsewhere.
    rng = np.random.default_rng(0)
    logits = []
    for i, feature in enumerate(features):
        row = rng.normal(0, 0.1, (feature["length"], 2)).astype(np.float32)
        if i == inside[-1]:
            row[labels[i][0], 0] = row[labels[i][1], 1] = 10.0
        logits.append(row)
    assert task.predict(logits, features, data.examples["train"]) == ["Brannock"]


def test_squad_v1_file_is_detected_and_flattened(tmp_path: Path, minilm_dir: Path) -> None:
    context = "Esko Vesk worked as a weaver in Tolk."
    weaver = {"text": "weaver", "answer_start": context.index("weaver")}
    tolk = {"text": "Tolk", "answer_start": context.index("Tolk")}
    qas = [
        {"id": "a", "question": "What did Esko do?", "answers": [weaver]},
        {"id": "b", "question": "Where?", "answers": [tolk, tolk]},
    ]
    train = squad_file(tmp_path / "train.json", [{"context": context, "qas": qas}])
    data, task = load(squad_config(tmp_path, minilm_dir, {"train": train}))
    rows = data.examples["train"]
    assert rows["id"] == ["a", "b"] and rows["answers"][1]["text"] == ["Tolk", "Tolk"]
    assert task.references(rows) == [["weaver"], ["Tolk", "Tolk"]]


def test_answer_not_matching_the_context_names_file_and_line(
    tmp_path: Path, minilm_dir: Path
) -> None:
    context = "Fenna Rook lives in Duruth."
    qas = [
        {"id": "ok", "question": "Who?", "answers": [{"text": "Fenna Rook", "answer_start": 0}]},
        {"id": "bad", "question": "Where?", "answers": [{"text": "Duruth", "answer_start": 3}]},
    ]
    train = squad_file(tmp_path / "train.json", [{"context": context, "qas": qas}])
    with pytest.raises(NluftError) as info:
        load(squad_config(tmp_path, minilm_dir, {"train": train}))
    message = str(info.value)
    lines = train.read_text().splitlines()
    line = next(i for i, text in enumerate(lines) if '"id": "bad"' in text) + 1
    assert message.startswith(f"{train}:{line}: question 'bad': answer 'Duruth'"), message
    assert "answer_start 3" in message and "\n" not in message


def test_unanswerable_question_needs_v2(tmp_path: Path, minilm_dir: Path) -> None:
    qas = [{"id": "n", "question": "Why?", "answers": [], "is_impossible": True}]
    train = squad_file(tmp_path / "train.json", [{"context": "Some text.", "qas": qas}], "v2.0")
    with pytest.raises(NluftError, match=r"qa\.version_2_with_negative: true"):
        load(squad_config(tmp_path, minilm_dir, {"train": train}))
    data, _ = load(
        squad_config(tmp_path, minilm_dir, {"train": train}, version_2_with_negative=True)
    )
    assert data.features["train"]["labels"] == [[0, 0]]


def test_check_reports_mismatched_answers(tmp_path: Path, minilm_dir: Path) -> None:
    data, task = load(
        squad_config(
            tmp_path,
            minilm_dir,
            {"train": FIXTURES / "train-v2.0.json"},
            version_2_with_negative=True,
        )
    )
    examples = data.examples["train"]
    assert task.check("train", examples, None) == []

    def shift_first(row: dict, i: int) -> dict:
        starts = row["answers"]["answer_start"]
        return {"answers": {**row["answers"], "answer_start": [s + (i == 0) for s in starts]}}

    broken = examples.map(shift_first, with_indices=True)
    findings = task.check("train", broken, None)
    assert len(findings) == 1 and findings[0].level == "error"
    assert "does not match the context" in findings[0].message


# --- the real CLI ---------------------------------------------------------------------------------


def test_train_then_eval_reproduces_the_metrics(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    nluft(
        "train",
        "configs/qa_squad.yaml",
        f"model.name_or_path={tiny_model_dir}",
        f"output_dir={run}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.learning_rate=3e-3",
        "train.num_train_epochs=3",
        "train.eval_strategy='no'",  # quoted: YAML reads a bare no as false
        "tracking.progress_bar=false",
        check=True,
    )
    saved = json.loads((run / "results" / "test.json").read_text())
    assert saved["total"] == 50 and saved["NoAns_total"] == 10
    # Always answering "no answer" scores 20; the trained model does better.
    assert saved["f1"] > 20.0, saved
    proc = nluft("eval", str(run), "--split", "test", "--json", check=True)
    metrics = json.loads(proc.stdout)
    for key in ("exact_match", "f1", "HasAns_f1", "NoAns_exact"):
        assert metrics[key] == pytest.approx(saved[key], abs=1e-9), key
