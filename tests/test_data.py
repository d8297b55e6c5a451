"""Data: every local format, hub-style dataset directories, seeded splits, caching, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import sentiment_rows, write_csv, write_jsonl

from nluft.config import load_config
from nluft.data import build_data
from nluft.data.loading import load_raw_splits
from nluft.errors import NluftError
from nluft.models import build_tokenizer
from nluft.tasks import build_task


def make_config(tmp_path: Path, model_dir: Path, data: dict, **sections: dict) -> Path:
    cfg = {
        "task": "classification",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(model_dir)},
        "data": {"cache_dir": str(tmp_path / "cache"), **data},
        **sections,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def data_of(
    tmp_path: Path,
    model_dir: Path,
    data: dict,
    overrides: list[str] | None = None,
    **sections: dict,
):
    cfg = load_config(make_config(tmp_path, model_dir, data, **sections), overrides or [])
    task = build_task(cfg)
    return build_data(cfg, task, build_tokenizer(cfg.model), True, lambda: None), task


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_every_local_format_loads(tmp_path: Path, tiny_model_dir: Path, fmt: str) -> None:
    rows = sentiment_rows(50)
    path = tmp_path / f"train.{fmt}"
    if fmt in ("csv", "tsv"):
        write_csv(path, rows, "," if fmt == "csv" else "\t")
    elif fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    data, task = data_of(tmp_path, tiny_model_dir, {"train_file": str(path)})
    assert sum(len(ds) for ds in data.examples.values()) == 50
    assert task.label_names == ["negative", "positive"]


def test_column_mapping_and_pair_columns(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [
        {"premise": r["text"], "hypothesis": "it was fine", "gold": r["label"]}
        for r in sentiment_rows(40)
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    data, _ = data_of(
        tmp_path,
        tiny_model_dir,
        {
            "train_file": str(path),
            "text_column": "premise",
            "text_pair_column": "hypothesis",
            "label_column": "gold",
        },
    )
    first = data.features["train"][0]
    assert 1 in first["token_type_ids"], "the pair is encoded as a second segment"


def test_seeded_split_is_deterministic_and_disjoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write_csv(tmp_path / "all.csv", sentiment_rows(200))
    cfg = load_config(make_config(tmp_path, tiny_model_dir, {"train_file": str(path)}))
    a, _ = load_raw_splits(cfg.data)
    b, _ = load_raw_splits(cfg.data)
    assert {k: len(v) for k, v in a.items()} == {"train": 160, "validation": 20, "test": 20}
    assert a["test"]["_row"] == b["test"]["_row"]
    rows = [set(a[s]["_row"]) for s in ("train", "validation", "test")]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])


def test_second_run_reads_the_tokenized_cache(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write_csv(tmp_path / "all.csv", sentiment_rows(80))
    first, _ = data_of(tmp_path, tiny_model_dir, {"train_file": str(path)})
    second, _ = data_of(tmp_path, tiny_model_dir, {"train_file": str(path)})
    assert not first.cache_hit and second.cache_hit
    assert second.cache_path == first.cache_path
    third, _ = data_of(tmp_path, tiny_model_dir, {"train_file": str(path), "max_length": 16})
    assert not third.cache_hit, "changing max_length re-tokenizes"


def test_local_dataset_directory_through_the_hub_code_path(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    directory = tmp_path / "my_dataset"
    directory.mkdir()
    write_csv(directory / "train.csv", sentiment_rows(60, 1))
    write_csv(directory / "validation.csv", sentiment_rows(20, 2))
    write_csv(directory / "test.csv", sentiment_rows(20, 3))
    data, _ = data_of(tmp_path, tiny_model_dir, {"dataset_name": str(directory)})
    assert {k: len(v) for k, v in data.examples.items()} == {
        "train": 60,
        "validation": 20,
        "test": 20,
    }


def test_saved_dataset_dict_directory(tmp_path: Path, tiny_model_dir: Path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {
            "train": Dataset.from_list(sentiment_rows(50)),
            "dev": Dataset.from_list(sentiment_rows(10, 4)),
        }
    ).save_to_disk(str(tmp_path / "saved"))
    data, _ = data_of(tmp_path, tiny_model_dir, {"dataset_name": str(tmp_path / "saved")})
    assert len(data.examples["validation"]) == 10, "'dev' is read as the validation split"


def test_unseen_label_names_the_file_and_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    train = write_csv(tmp_path / "train.csv", sentiment_rows(30))
    rows = sentiment_rows(10, 5)
    rows[3]["label"] = "neutral"
    val = write_csv(tmp_path / "val.csv", rows)
    with pytest.raises(NluftError) as info:
        data_of(tmp_path, tiny_model_dir, {"train_file": str(train), "validation_file": str(val)})
    assert f"{val}:5" in str(info.value) and "'neutral'" in str(info.value)


def test_missing_column_names_the_key(tmp_path: Path, tiny_model_dir: Path) -> None:
    train = write_csv(tmp_path / "train.csv", sentiment_rows(30))
    with pytest.raises(NluftError, match=r"no column 'sentence'.*set data\.text_column"):
        data_of(tmp_path, tiny_model_dir, {"train_file": str(train), "text_column": "sentence"})


def test_empty_and_malformed_files(tmp_path: Path, tiny_model_dir: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(NluftError, match="empty"):
        data_of(tmp_path, tiny_model_dir, {"train_file": str(empty)})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": "x"}\n{"text": oops\n')
    with pytest.raises(NluftError, match=r"broken\.jsonl"):
        data_of(tmp_path, tiny_model_dir, {"train_file": str(broken)})


def test_balanced_class_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"text": "good", "label": "pos"}] * 30 + [{"text": "bad", "label": "neg"}] * 10
    train = write_csv(tmp_path / "train.csv", rows)
    _, task = data_of(
        tmp_path,
        tiny_model_dir,
        {"train_file": str(train)},
        classification={"class_weights": "balanced"},
    )
    weights = dict(zip(task.label_names, task.class_weights.tolist(), strict=True))
    assert weights["neg"] == pytest.approx(40 / (2 * 8), rel=0.3)
    assert weights["neg"] > weights["pos"]
