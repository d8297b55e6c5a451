"""Span-annotated NER exports (entities JSONL, Doccano, Label Studio, brat) and CoNLL detected by
content: the words and tags they become, and the bad spans check-data and train report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import nluft, write_jsonl
from zh_data import zh_tokenizer  # noqa: F401 (fixture)

from nluft.config import DataConfig, NerConfig
from nluft.data.loading import file_format, read_file
from nluft.errors import NluftError

TEXT = "张伟在北京工作。"  # 张伟 = PER [0, 2), 北京 = LOC [3, 5)
WORDS = list(TEXT)
BIO = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "O"]
BMES = ["B-PER", "E-PER", "O", "B-LOC", "E-LOC", "O", "O", "O"]


def read(path: Path, scheme: str = "BIO", **data: object) -> dict[str, list[object]]:
    ner = NerConfig(tag_scheme=scheme)  # type: ignore[arg-type]
    dataset = read_file(str(path), DataConfig(**data), ner)  # type: ignore[arg-type]
    return dataset.to_dict()


def test_entities_jsonl_and_doccano_become_words_and_tags(tmp_path: Path) -> None:
    spans = write_jsonl(
        tmp_path / "spans.jsonl",
        [
            {"text": TEXT, "entities": [{"start": 0, "end": 2, "type": "PER"}, [3, 5, "LOC"]]},
            {
                "text": "Alice 在 Peking University 读书",
                "entities": [[8, 25, "ORG"], [0, 5, "PER"]],
            },
        ],
    )
    doccano = write_jsonl(
        tmp_path / "doccano.jsonl",
        [{"id": 7, "text": TEXT, "label": [[3, 5, "LOC"], [0, 2, "PER"]]}],
    )
    assert file_format(str(spans), "auto", NerConfig()) == "spans"
    assert file_format(str(doccano), "auto", NerConfig()) == "doccano"
    assert file_format(str(doccano), "auto") == "jsonl", "only NER reads spans"
    rows = read(spans, "BMES")
    assert rows["tokens"][0] == WORDS and rows["tags"][0] == BMES
    # Latin runs are whitespace-split words, CJK characters one word each.
    assert rows["tokens"][1] == ["Alice", "在", "Peking", "University", "读", "书"]
    assert rows["tags"][1] == ["S-PER", "O", "B-ORG", "E-ORG", "O", "O"]
    assert rows["_where"] == [f"{spans}:1", f"{spans}:2"]
    assert rows["_span_errors"] == [[], []]
    assert read(doccano)["tags"] == [BIO]


def test_label_studio_export_and_brat_standoff(tmp_path: Path) -> None:
    result = [
        {"type": "labels", "value": {"start": 0, "end": 2, "text": "张伟", "labels": ["PER"]}},
        {"type": "labels", "value": {"start": 3, "end": 5, "text": "北京", "labels": ["LOC"]}},
    ]
    tasks = [
        {
            "id": 1,
            "data": {"text": TEXT},
            "annotations": [{"was_cancelled": True, "result": []}, {"result": result}],
        },
        {"id": 2, "data": {"text": "李娜去了上海。"}, "annotations": []},
    ]
    studio = tmp_path / "export.json"
    studio.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
    assert file_format(str(studio), "auto", NerConfig()) == "label_studio"
    rows = read(studio)
    assert rows["tags"] == [BIO, ["O"] * 7] and rows["tokens"][0] == WORDS
    # Each task is located at the line where its object opens (" {" with indent=1).
    starts = [n for n, line in enumerate(studio.read_text().splitlines(), 1) if line == " {"]
    assert rows["_where"] == [f"{studio}:{n}" for n in starts] and starts[0] == 2

    brat = tmp_path / "brat"
    brat.mkdir()
    (brat / "a.txt").write_text(f"{TEXT}\n\n李娜去了上海。\n", encoding="utf-8")
    offset = len(TEXT) + 2  # the second sentence starts after TEXT, "\n" and a blank line
    ann = "T1\tPER 0 2\t张伟\nT2\tLOC 3 5\t北京\nR1\tWorksIn Arg1:T1 Arg2:T2\n"
    ann += f"T3\tLOC {offset + 4} {offset + 6}\t上海\n"
    (brat / "a.ann").write_text(ann, encoding="utf-8")
    assert file_format(str(brat), "auto", NerConfig()) == "brat"
    rows = read(brat)
    assert rows["tokens"] == [WORDS, list("李娜去了上海。")]
    assert rows["tags"] == [BIO, ["O", "O", "O", "O", "B-LOC", "I-LOC", "O"]]
    assert rows["_where"] == [f"{brat / 'a.txt'}:1", f"{brat / 'a.txt'}:3"]
    assert read(brat / "a.ann")["tags"] == rows["tags"]


def test_conll_is_read_by_content_from_txt_and_bmes_files(tmp_path: Path) -> None:
    conll = tmp_path / "train.txt"
    conll.write_text("张 B-PER\n伟 E-PER\n在 O\n\n北 B-LOC\n京 E-LOC\n", encoding="utf-8")
    assert file_format(str(conll), "auto", NerConfig()) == "conll"
    assert read(conll, "BMES")["tags"] == [["B-PER", "E-PER", "O"], ["B-LOC", "E-LOC"]]
    prose = tmp_path / "notes.txt"
    prose.write_text("These are notes, not tagged tokens.\n", encoding="utf-8")
    with pytest.raises(NluftError, match="cannot tell the format from the extension"):
        file_format(str(prose), "auto", NerConfig())


def bad_span_rows() -> list[dict[str, object]]:
    return [
        {"text": TEXT, "entities": [[0, 2, "PER"], [3, 5, "LOC"]]},  # line 1: fine
        {"text": TEXT, "entities": [[0, 2, "PER"], [1, 3, "LOC"]]},  # line 2: overlap
        {"text": "Alice lives in Paris", "entities": [[0, 3, "PER"]]},  # line 3: inside "Alice"
        {"text": TEXT, "entities": [[6, 12, "LOC"]]},  # line 4: past the end (length 8)
        {"text": "Bob 在 上海 ", "entities": [[6, 9, "LOC"]]},  # line 5: trailing space trimmed
    ]


def test_bad_spans_are_reported_by_check_data_and_refused_by_train(
    tmp_path: Path,
    zh_tokenizer: Path,  # noqa: F811
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", bad_span_rows())
    cfg = {
        "task": "ner",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(zh_tokenizer)},
        "data": {"train_file": str(train), "cache_dir": str(tmp_path / "cache")},
    }
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = nluft(
        "check-data",
        str(config),
        "data.validation_split_percentage=0",
        "data.test_split_percentage=0",
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error")]
    assert len(errors) == 3, proc.stdout
    assert f"{train}:2: LOC span [1, 3) '伟在' overlaps PER span [0, 2)" in errors[0]
    assert f"{train}:3: PER span [0, 3) 'Ali' starts or ends inside a word" in errors[1]
    assert f"{train}:4: LOC span [6, 12) is outside the text (length 8)" in errors[2]
    proc = nluft(
        "train",
        str(config),
        "data.validation_split_percentage=0",
        "data.test_split_percentage=0",
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"nluft: error: {train}:2: LOC span [1, 3) '伟在' overlaps PER span [0, 2); nested or "
        "overlapping entities cannot be tagged: keep one"
    ]
    assert not (tmp_path / "run").exists(), "bad input leaves no run directory"
