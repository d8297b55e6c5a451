"""Read raw splits (train/validation/test) from local files or a dataset name via `datasets`."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping
import json
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from nluft.config import DataConfig, NerConfig
from nluft.data.conll import CONLL_SUFFIXES, LINE_COLUMN, looks_like_conll, read_conll
from nluft.data.spans import SPAN_FORMATS, WHERE_COLUMN, detect_span_format, read_spans
from nluft.data.squad import SquadError, is_squad_file, read_squad
from nluft.errors import NluftError

SPLITS = ("train", "validation", "test")
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".conll": "conll",
}
BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
ROW_COLUMN = "_row"
SPLIT_ALIASES = {
    "dev": "validation",
    "valid": "validation",
    "val": "validation",
    "eval": "validation",
}


def file_format(path: str, configured: str, ner: NerConfig | None = None, text_column: str = "text") -> str:
    """The configured format, else one told by the extension; for NER (`ner` given) also by the
    content: span exports (JSONL, Label Studio, brat) and CoNLL in `.txt`/`.bio`/`.bmes`/`.iob`."""
    if configured != "auto":
        return configured
    suffix = Path(path).suffix.lower()
    if ner is not None:
        spans = detect_span_format(path, text_column)
        if spans is not None:
            return spans
        if suffix in CONLL_SUFFIXES and looks_like_conll(path, ner):
            return "conll"
    if suffix == ".json" and is_squad_file(path):
        return "squad"
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise NluftError(
            f"{path}: cannot tell the format from the extension; "
            f"set data.file_format to one of {', '.join(sorted(set(FORMATS.values())))}"
        )
    return fmt


def read_file(path: str, data: DataConfig, ner: NerConfig | None = None) -> Dataset:
    """One local data file as a Dataset; parse problems name the file."""
    fmt = file_format(path, data.file_format, ner, data.text_column)
    kwargs = table_options(fmt)
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise NluftError(f"{path}: file is empty")
    if fmt == "conll":
        return read_conll(path, ner or NerConfig())
    if fmt in SPAN_FORMATS:
        return read_spans(path, fmt, data.text_column, ner or NerConfig())
    if fmt == "squad":
        try:
            return read_squad(path, ROW_COLUMN)
        except SquadError as err:
            raise NluftError(f"{path}: {err}") from None
    try:
        with quiet_datasets():  # it logs its own error line before raising; we report one line
            loaded = datasets.load_dataset(
                BUILDERS[fmt], data_files={"split": path}, split="split", **kwargs
            )
    except Exception as err:  # datasets raises many types; the user needs the file and the cause
        if fmt in ("json", "jsonl"):
            check_json_lines(path)  # names the bad line when there is one
        cause = str(err.__cause__ or err).strip().splitlines()
        raise NluftError(f"{path}: cannot read as {fmt}: {cause[-1] if cause else err}") from None
    assert isinstance(loaded, Dataset)
    if len(loaded) == 0:
        raise NluftError(f"{path}: no examples in file")
    return loaded


def table_options(fmt: str) -> dict[str, Any]:
    """Reader options: in CSV/TSV only an empty cell is missing; "NA", "None" or "null" are text
    (pandas would read them as missing values: a class named "None" would vanish)."""
    if fmt not in ("csv", "tsv"):
        return {}
    options: dict[str, Any] = {"keep_default_na": False, "na_values": [""]}
    return {**options, "delimiter": "\t"} if fmt == "tsv" else options


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_json_lines(path: str) -> None:
    """Name the first line of a JSON Lines file that is not a JSON object."""
    if Path(path).read_text(encoding="utf-8", errors="replace").lstrip().startswith("["):
        return  # a JSON array document, not JSON Lines
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise NluftError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise NluftError(f"{path}:{number}: expected a JSON object per line")


def read_named(data: DataConfig) -> DatasetDict:
    """A hub dataset name or a local dataset directory (saved or with data files)."""
    name = data.dataset_name
    assert name is not None
    path = Path(name)
    try:
        if (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(name, data.dataset_config_name)
    except FileNotFoundError as err:
        raise NluftError(f"data.dataset_name: dataset {name!r} not found ({err})") from None
    if not isinstance(loaded, DatasetDict):
        raise NluftError(f"data.dataset_name: {name!r} has no named splits")
    return DatasetDict({SPLIT_ALIASES.get(k, k): v for k, v in loaded.items()})


def with_row_numbers(dataset: Dataset) -> Dataset:
    """Add `ROW_COLUMN`, the example's position in its file, so errors can name the line."""
    if ROW_COLUMN in dataset.column_names:
        return dataset
    return dataset.add_column(ROW_COLUMN, list(range(len(dataset))))


def line_of(source: str, row: int) -> str:
    """`file:line` of an example (CSV/TSV have a header line; JSON Lines do not)."""
    suffix = Path(source).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return f"{source}:{row + 2}"
    if suffix == ".jsonl" or is_squad_file(source):  # SQuAD rows hold the question's line
        return f"{source}:{row + 1}"
    return f"{source} (example {row})"


def location(source: str, example: Mapping[str, Any], token: int | None = None) -> str:
    """`file:line` of an example, or of one of its tokens in a line-per-token file (CoNLL)."""
    if LINE_COLUMN in example:
        return f"{source}:{example[LINE_COLUMN] + (token or 0)}"
    if WHERE_COLUMN in example:  # span exports: the file and line of the example's text
        return str(example[WHERE_COLUMN])
    return line_of(source, example[ROW_COLUMN])


def load_raw_splits(
    data: DataConfig, ner: NerConfig | None = None
) -> tuple[DatasetDict, dict[str, str]]:
    """Train/validation/test splits and, for each, the file it came from (for error messages).

    Missing validation/test splits are cut from train with a seeded split.
    """
    if data.dataset_name:
        splits = read_named(data)
        sources = {split: f"{data.dataset_name}[{split}]" for split in splits}
    else:
        files = {s: getattr(data, f"{s}_file") for s in SPLITS if getattr(data, f"{s}_file")}
        splits = DatasetDict({split: read_file(path, data, ner) for split, path in files.items()})
        sources = dict(files)
    if "train" not in splits:
        raise NluftError(f"data.dataset_name: {data.dataset_name!r} has no 'train' split")
    splits = DatasetDict({k: with_row_numbers(v) for k, v in splits.items()})
    remaining = 100.0  # percentages are of the whole training file
    for split in ("test", "validation"):
        pct = getattr(data, f"{split}_split_percentage")
        if split not in splits and pct > 0:
            n = len(splits["train"])
            if n - math.ceil(n * pct / remaining) < 1:  # the cut would leave no training example
                raise NluftError(
                    f"{sources['train']}: {len(splits['train'])} examples are too few to cut a "
                    f"{pct:g}% {split} split; give data.{split}_file or set "
                    f"data.{split}_split_percentage=0"
                )
            cut = splits["train"].train_test_split(test_size=pct / remaining, seed=data.split_seed)
            splits["train"], splits[split] = cut["train"], cut["test"]
            sources[split] = sources["train"]
            remaining -= pct
    if data.max_train_samples:
        n = min(data.max_train_samples, len(splits["train"]))
        splits["train"] = splits["train"].select(range(n))
    if data.max_eval_samples:
        for split in ("validation", "test"):
            if split in splits:
                n = min(data.max_eval_samples, len(splits[split]))
                splits[split] = splits[split].select(range(n))
    return DatasetDict({s: splits[s] for s in SPLITS if s in splits}), sources
