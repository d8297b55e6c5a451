"""Relation extraction: negative-label micro-F1, entity markers, bad spans, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, nluft, write_jsonl

from nluft.config import load_config
from nluft.data import build_data
from nluft.errors import NluftError
from nluft.metrics import relation_scores
from nluft.models import build_tokenizer
from nluft.tasks import build_task
from nluft.tasks.relation import fit_length, insert_markers

FIXTURES = ROOT / "tests" / "fixtures" / "relation"
LABELS = ["born_in", "no_relation", "works_for"]


def test_micro_f1_leaves_out_the_negative_label() -> None:
    b, n, w = 0, 1, 2
    refs = [w, w, b, n, n, b]
    preds = [w, n, w, n, b, b]
    scores = relation_scores(preds, refs, LABELS, "no_relation")
    # Correct non-negative predictions: w (row 0), b (row 5) = 2. Predicted non-negative: rows
    # 0, 2, 4, 5 = 4. Gold non-negative: rows 0, 1, 2, 5 = 4. P = R = F1 = 0.5; the correct
    # no_relation in row 3 counts for nothing.
    assert scores["micro_precision"] == scores["micro_recall"] == scores["micro_f1"] == 0.5
    assert scores["works_for/precision"] == 0.5 and scores["works_for/recall"] == 0.5
    assert scores["born_in/precision"] == 0.5 and scores["born_in/recall"] == 0.5
    assert "no_relation/f1" not in scores
    everything = relation_scores(preds, refs, LABELS, None)
    assert everything["micro_f1"] == pytest.approx(0.5), "no negative label: plain accuracy"


def test_typed_markers_wrap_both_spans() -> None:
    text = "Quintar Labs hired Ivo Pell."
    subject = {"start": 19, "end": 27, "type": "PER"}
    obj = {"start": 0, "end": 12, "type": "ORG"}
    vocab = {"[E1:PER]": 1, "[E2]": 2}
    marked = insert_markers(text, subject, obj, vocab)
    assert marked == "[E2] Quintar Labs [/E2] hired [E1:PER] Ivo Pell [/E1]."


def test_long_text_keeps_the_markers(minilm_dir: Path) -> None:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    tokenizer.add_tokens(["[E1]", "[/E1]", "[E2]", "[/E2]"], special_tokens=True)
    filler = " ".join(["the harvest was late that year"] * 20)
    text = f"{filler} [E1] Alva [/E1] sold grain to [E2] Ember Freight [/E2] {filler}"
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("[E1]", "[E2]")}
    enc = fit_length(text, tokenizer, 48, ids)
    assert len(enc["input_ids"]) <= 48
    assert ids <= set(enc["input_ids"]), "both start markers survive the cut"


def relation_config(tmp_path: Path, model_dir: Path, train: Path) -> Path:
    cfg = {
        "task": "relation",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "train_file": str(train),
            "label_column": "relation",
            "max_length": 48,
            "cache_dir": str(tmp_path / "cache"),
        },
    }
    path = tmp_path / "re.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def load(config: Path):
    cfg = load_config(config)
    task = build_task(cfg)
    tokenizer = build_tokenizer(cfg.model)
    return build_data(cfg, task, tokenizer, True, lambda: None), task, tokenizer


def rows_with(index: int, **change: object) -> list[dict]:
    rows = [json.loads(line) for line in (FIXTURES / "train.jsonl").read_text().splitlines()]
    rows[index].update(change)
    return rows


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"object": {"start": 30, "end": 99}}, "object span [30, 99) is outside the text"),
        ({"subject": {"start": 0, "end": 5}, "object": {"start": 3, "end": 9}}, "overlap"),
        ({"subject": {"start": -1, "end": 4}}, "subject span [-1, 4) is outside the text"),
    ],
)
def test_bad_spans_name_file_and_line(
    tmp_path: Path, minilm_dir: Path, change: dict, expected: str
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", rows_with(6, **change))
    with pytest.raises(NluftError) as info:
        load(relation_config(tmp_path, minilm_dir, train))
    message = str(info.value)
    assert message.startswith(f"{train}:7: ") and expected in message, message


def test_malformed_json_line_names_file_and_line(tmp_path: Path, minilm_dir: Path) -> None:
    train = tmp_path / "train.jsonl"
    lines = (FIXTURES / "train.jsonl").read_text().splitlines()
    lines[4] = lines[4][:-1]  # drop the closing brace
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(NluftError, match=rf"^{train}:5: not valid JSON"):
        load(relation_config(tmp_path, minilm_dir, train))


def test_markers_join_the_tokenizer_and_check_finds_bad_spans(
    tmp_path: Path, minilm_dir: Path
) -> None:
    data, task, tokenizer = load(relation_config(tmp_path, minilm_dir, FIXTURES / "train.jsonl"))
    assert task.entity_types == ["LOC", "ORG", "PER"]
    assert {"[E1:PER]", "[E2:ORG]", "[/E2]"} <= set(tokenizer.get_vocab())
    ids = data.features["train"][0]["input_ids"]
    assert tokenizer.convert_tokens_to_ids("[/E1]") in ids
    examples = data.examples["train"]
    assert task.check("train", examples, tokenizer) == []
    bad = examples.map(
        lambda row, i: {"object": row["subject"]} if i == 2 else {}, with_indices=True
    )
    findings = task.check("train", bad, tokenizer)
    assert [f.level for f in findings] == ["error"] and "overlap" in findings[0].message


def test_train_eval_and_predict_from_the_export(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    nluft(
        "train",
        "configs/relation.yaml",
        f"model.name_or_path={tiny_model_dir}",
        f"output_dir={run}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.validation_file=null",
        "train.learning_rate=3e-3",
        "train.num_train_epochs=4",
        "train.eval_strategy='no'",
        "tracking.progress_bar=false",
        check=True,
    )
    saved = json.loads((run / "results" / "test.json").read_text())
    assert saved["micro_f1"] > 0.6, saved
    assert {"born_in/f1", "lives_in/f1", "works_for/f1"} <= set(saved)
    assert "no_relation/f1" not in saved
    metrics = json.loads(nluft("eval", str(run), "--split", "test", "--json", check=True).stdout)
    assert metrics["micro_f1"] == pytest.approx(saved["micro_f1"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(saved["loss"], rel=1e-5)
    # predict reads the same records and agrees with eval, row by row.
    test = FIXTURES / "test.jsonl"
    rows = [
        json.loads(line)
        for line in nluft("predict", str(run), "--input", str(test)).stdout.splitlines()
    ]
    assert len(rows) == 40 and set(rows[0]["scores"]) == {
        "born_in",
        "lives_in",
        "no_relation",
        "works_for",
    }
    accuracy = sum(r["label"] == r["relation"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(saved["accuracy"], abs=1e-9)
