"""Task data: raw splits, encoded features (cached on disk), and where each came from."""

from __future__ import annotations

import hashlib
import os
import json
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from nluft.config import Config
from nluft.data.augment import augment_split
from nluft.data.loading import ROW_COLUMN, line_of, load_raw_splits, location
from nluft.data.vocab import extend_vocab_from_data
from nluft.errors import ExampleError, NluftError
from nluft.tasks import Task

ENCODING_VERSION = 1  # bump when encoding changes, so cached features are rebuilt


@dataclass
class TaskData:
    """Examples and model features per split; features carry `example_id` and `length`."""

    examples: DatasetDict
    features: DatasetDict
    sources: dict[str, str]
    cache_path: Path
    cache_hit: bool


def build_data(
    cfg: Config, task: Task, tokenizer: Any, is_main: bool, barrier: Callable[[], None]
) -> TaskData:
    """Load splits, fix the task's labels, and encode (rank 0 encodes; the others read its cache)."""
    datasets.disable_progress_bars()
    examples, sources = load_raw_splits(cfg.data, cfg.ner if cfg.task == "ner" else None)
    check_columns(task, examples, sources)
    with located(examples, sources, "train"):
        task.prepare(examples)
    extend_vocab_from_data(cfg, task, examples, tokenizer)
    extend_tokenizer = getattr(task, "extend_tokenizer", None)
    if extend_tokenizer is not None:  # e.g. relation's entity markers; every rank, before encoding
        extend_tokenizer(tokenizer)
    path = Path(cfg.data.cache_dir) / "tokenized" / cache_key(cfg, task, tokenizer, examples)
    examples = augmented(cfg, task, tokenizer, examples)
    hit = (path / "dataset_dict.json").is_file()
    if is_main and not hit:
        features = DatasetDict(
            {
                split: encode_split(task, tokenizer, ds, split, sources)
                for split, ds in examples.items()
            }
        )
        publish(features, path)
    barrier()
    features = datasets.load_from_disk(str(path))
    assert isinstance(features, DatasetDict)
    return TaskData(examples, features, sources, path, hit)


def augmented(cfg: Config, task: Task, tokenizer: Any, examples: DatasetDict) -> DatasetDict:
    """The splits with word-level variants of the training texts added (distill.augment)."""
    options = cfg.distill.augment
    if options.copies == 0:
        return examples
    columns = list(getattr(task, "input_columns", []))
    train = augment_split(examples["train"], columns, options, getattr(tokenizer, "mask_token", None))
    return DatasetDict({**examples, "train": train})


def publish(features: DatasetDict, path: Path) -> None:
    """Save to a private temporary folder, then rename; concurrent jobs (a sweep) may race here."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    features.save_to_disk(str(tmp))
    try:
        tmp.replace(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "dataset_dict.json").is_file():
            raise
        # Another job published the same features first; theirs are identical.


def check_columns(task: Task, examples: DatasetDict, sources: dict[str, str]) -> None:
    columns: dict[str, str] = getattr(task, "columns", {})
    for split, dataset in examples.items():
        for key, column in columns.items():
            if column not in dataset.column_names:
                have = ", ".join(c for c in dataset.column_names if c != ROW_COLUMN)
                raise NluftError(
                    f"{sources[split]}: no column '{column}' (columns: {have}); set {key}"
                )


class located:
    """Turn a task's ExampleError into a NluftError naming the file and line."""

    def __init__(self, examples: DatasetDict, sources: dict[str, str], split: str) -> None:
        self.examples, self.sources, self.split = examples, sources, split

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: Any, tb: Any) -> None:
        if isinstance(err, ExampleError):
            split = next((s for s in self.examples if err.message.startswith(f"{s}:")), self.split)
            message = err.message.removeprefix(f"{split}: ")
            dataset = self.examples[split]
            source = self.sources[split]
            where = (
                location(source, dataset[err.row], err.token)
                if err.row < len(dataset)
                else line_of(source, err.row)
            )
            raise NluftError(f"{where}: {message}") from None


def encode_split(
    task: Task, tokenizer: Any, dataset: Dataset, split: str, sources: dict[str, str]
) -> Dataset:
    def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        try:
            out = task.encode(batch, tokenizer)
        except ExampleError as err:
            example = {k: batch[k][err.row] for k in batch if k.startswith("_")}
            where = location(sources[split], example, err.token)
            raise NluftError(f"{where}: {err.message}") from None
        within = out.pop("example_id", list(range(len(indices))))
        out["example_id"] = [indices[i] for i in within]
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    return dataset.map(
        encode,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        desc=f"encode {split}",
    )


def num_windowed(features: Dataset) -> int:
    """Examples encoded as more than one feature (split into windows, not truncated)."""
    ids = features["example_id"]
    return sum(1 for n in Counter(ids).values() if n > 1)


def cache_key(cfg: Config, task: Task, tokenizer: Any, examples: DatasetDict) -> str:
    """Same data, tokenizer and encoding settings -> same key -> no re-tokenization."""
    parts = {
        "version": ENCODING_VERSION,
        "task": task.name,
        "labels": task.label_names,
        "data": cfg.data.model_dump(mode="json", exclude={"cache_dir"}),
        "task_options": getattr(cfg, task.name, None)
        and getattr(cfg, task.name).model_dump(mode="json"),
        "tokenizer": [type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer)],
        "fingerprints": {split: ds._fingerprint for split, ds in examples.items()},
    }
    if cfg.distill.augment.copies:  # the key names the training texts' variants too
        parts["augment"] = cfg.distill.augment.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return f"{task.name}-{digest[:16]}"


__all__ = ["TaskData", "build_data", "num_windowed"]
