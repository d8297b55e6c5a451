"""Chinese NER end to end on the tiny model: span JSONL in, BMES tags, characters the tokenizer
lacks added (model.extend_vocab_from_data), predictions saved per split, `predict --text` with
character offsets, and `nluft eval` writing the same files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import nluft, write_jsonl
from zh_data import LEFT_OUT, zh_model_dir, zh_rows  # noqa: F401 (fixture)


def test_chinese_ner_trains_predicts_offsets_and_saves_predictions(
    tmp_path: Path,
    zh_model_dir: Path,  # noqa: F811
) -> None:
    files = {
        split: write_jsonl(tmp_path / f"{split}.jsonl", zh_rows(n, seed))
        for split, n, seed in (("train", 160, 1), ("validation", 20, 2), ("test", 30, 3))
    }
    cfg = {
        "task": "ner",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(zh_model_dir), "extend_vocab_from_data": True},
        "data": {
            **{f"{s}_file": str(p) for s, p in files.items()},
            "max_length": 32,
            "cache_dir": str(tmp_path / "cache"),
        },
        "ner": {"tag_scheme": "BMES", "stride": 4},
        "train": {
            "learning_rate": 5e-3,
            "num_train_epochs": 4,
            "per_device_train_batch_size": 16,
            "eval_strategy": "no",
            "seed": 3,
        },
        "tracking": {"progress_bar": False},
    }
    config = tmp_path / "zh.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    nluft("train", str(config), check=True, timeout=600)
    run = tmp_path / "run"
    saved = json.loads((run / "results" / "test.json").read_text())
    assert saved["f1"] >= 0.9, saved
    vocab = json.loads((run / "export" / "tokenizer.json").read_text())
    added = {token["content"] for token in vocab["added_tokens"]}
    assert added >= LEFT_OUT, "the place-name characters were added to the tokenizer"
    conll = (run / "results" / "test_predictions.conll").read_text().split("\n")
    first = conll[0].split("\t")
    assert len(first) == 3 and len(first[0]) == 1, conll[:3]  # character, gold, predicted
    assert sum(1 for line in conll if not line) == 30  # one blank line after each sentence
    text = "刘洋在南京工作。"
    row = json.loads(nluft("predict", str(run), "--text", text, check=True).stdout)
    assert row["tags"] == ["B-PER", "E-PER", "O", "B-LOC", "E-LOC", "O", "O", "O"]
    assert row["entities"] == [
        {"type": "PER", "text": "刘洋", "start": 0, "end": 2, "words": [0, 2]},
        {"type": "LOC", "text": "南京", "start": 3, "end": 5, "words": [3, 5]},
    ]
    (run / "results" / "test_predictions.conll").unlink()
    metrics = json.loads(nluft("eval", str(run), "--json", check=True).stdout)
    assert metrics["f1"] == saved["f1"]
    assert (run / "results" / "test_predictions.conll").read_text().split("\n") == conll
