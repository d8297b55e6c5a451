"""`nluft check-data`: problems in a run's data, found before any training.

Generic checks (label distribution, duplicates across splits, empty inputs, truncation at
`data.max_length`) run for every task; a task adds its own through an optional
`check(split, examples, tokenizer) -> list[Finding]` method.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from nluft.config import Config
from nluft.data import check_columns, encode_split, located, num_windowed
from nluft.data.loading import ROW_COLUMN, load_raw_splits, location
from nluft.errors import NluftError
from nluft.tasks import Task, build_task
from nluft.tasks.base import Finding

IMBALANCE_RATIO = 10.0  # most / least frequent label above this -> warning
SHOWN_PER_KIND = 10
UNLIMITED = 32768  # the largest data.max_length the config allows  # findings of one kind listed before "... and N more"


@dataclass
class DataReport:
    """What check-data prints: facts about the data, then findings."""

    facts: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def num_errors(self) -> int:
        return sum(1 for f in self.findings if f.level == "error")


def check_data(cfg: Config, task: Task, tokenizer: Any) -> DataReport:
    """Every check on every split; a config or file problem still raises NluftError."""
    datasets.disable_progress_bars()
    examples, sources = load_raw_splits(cfg.data, cfg.ner if cfg.task == "ner" else None)
    check_columns(task, examples, sources)
    report = DataReport()
    report.facts.append(
        "examples: " + ", ".join(f"{s} {len(ds)} ({sources[s]})" for s, ds in examples.items())
    )
    prepared = prepare_findings(task, examples, sources)
    task_findings = [
        resolve(finding, examples, sources)
        for split, dataset in examples.items()
        for finding in getattr(task, "check", lambda *_: [])(split, dataset, tokenizer)
    ]
    # The task's own checks list every bad example; prepare only stops at the first one.
    seen = {f.where for f in task_findings}
    report.findings += [f for f in prepared if f.where not in seen] + task_findings
    distribution(task, examples["train"], report)
    report.findings += duplicates(task, examples, sources)
    report.findings += empty_inputs(task, examples, sources)
    truncation(cfg, task, tokenizer, examples, sources, report)
    return report


def prepare_findings(task: Task, examples: DatasetDict, sources: dict[str, str]) -> list[Finding]:
    """The first label problem `task.prepare` (which training runs too) stops at, if any."""
    try:
        with located(examples, sources, "train"):
            task.prepare(examples)
    except NluftError as err:
        where, _, message = str(err).partition(": ")
        return [Finding("error", where, message)]
    return []


def resolve(finding: Finding, examples: DatasetDict, sources: dict[str, str]) -> Finding:
    """A task's finding at (split, row, token) -> the same finding at `file:line`."""
    if finding.row is None or finding.where not in examples:
        return finding
    example = examples[finding.where][finding.row]
    where = location(sources[finding.where], example, finding.token)
    return Finding(finding.level, where, finding.message)


def input_columns(task: Task, dataset: Dataset) -> list[str]:
    """The columns a task reads as model input (all columns when the task does not say)."""
    columns = getattr(task, "input_columns", None)
    return list(columns) if columns else [c for c in dataset.column_names if c[:1] != "_"]


def distribution(task: Task, train: Dataset, report: DataReport) -> None:
    """Label counts of the training split, an imbalance warning and inverse-frequency weights."""
    counter = getattr(task, "label_counts", None)
    if counter is None:
        return
    counts: dict[str, int] = counter(train)
    if not counts:
        return
    total = sum(counts.values())
    report.facts.append("label distribution (train):")
    width = max(len(name) for name in counts)
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        report.facts.append(f"  {name.ljust(width)}  {n:7d}  {100 * n / total:5.1f}%")
    most = max(counts, key=lambda k: counts[k])
    least = min(counts, key=lambda k: counts[k])
    if counts[most] > IMBALANCE_RATIO * counts[least]:
        weights = {k: round(total / (len(counts) * n), 3) for k, n in sorted(counts.items())}
        report.findings.append(
            Finding(
                "warning",
                "train",
                f"imbalanced labels: {most!r} has {counts[most]} examples, {least!r} only "
                f"{counts[least]}; suggested class weights (inverse frequency): {weights}",
            )
        )


def example_key(example: dict[str, Any], columns: list[str]) -> tuple[Any, ...]:
    """What makes two examples the same input: whitespace-normalised text or token lists."""
    key: list[Any] = []
    for column in columns:
        value = example.get(column)
        if isinstance(value, str):
            key.append(" ".join(value.split()))
        elif isinstance(value, list):
            key.append(tuple(str(v) for v in value))
        else:
            key.append(value)
    return tuple(key)


def duplicates(task: Task, examples: DatasetDict, sources: dict[str, str]) -> list[Finding]:
    """Inputs that occur in two splits (leakage: the model is evaluated on what it trained on)."""
    first_seen: dict[tuple[Any, ...], tuple[str, str]] = {}
    findings = []
    for split, dataset in examples.items():
        columns = input_columns(task, dataset)
        for example in dataset.select_columns([*columns, *hidden(dataset)]):
            key = example_key(example, columns)
            here = location(sources[split], example)
            if key not in first_seen:
                first_seen[key] = (split, here)
            elif first_seen[key][0] != split:
                other_split, other = first_seen[key]
                message = f"duplicate across splits: {split} repeats {other_split} example {other}"
                findings.append(Finding("warning", here, message))
    return findings


def hidden(dataset: Dataset) -> list[str]:
    """The bookkeeping columns (row, line) that locate an example in its file."""
    return [c for c in dataset.column_names if c.startswith("_")]


def empty_inputs(task: Task, examples: DatasetDict, sources: dict[str, str]) -> list[Finding]:
    """Examples whose input text (or token list) is missing or blank."""
    findings = []
    for split, dataset in examples.items():
        columns = input_columns(task, dataset)
        for example in dataset.select_columns([*columns, *hidden(dataset)]):
            for column in columns:
                if is_blank(example.get(column)):
                    where = location(sources[split], example)
                    findings.append(Finding("warning", where, f"empty input in column {column!r}"))
    return findings


def is_blank(value: Any) -> bool:
    """None, a whitespace-only string, or a list of nothing but blank strings."""
    if isinstance(value, list):
        return all(is_blank(v) for v in value)
    return value is None or (isinstance(value, str) and not value.strip())


def truncation(
    cfg: Config,
    task: Task,
    tokenizer: Any,
    examples: DatasetDict,
    sources: dict[str, str],
    report: DataReport,
) -> None:
    """How many examples exceed `data.max_length`: truncated, or split into windows by the task."""
    limit = cfg.data.max_length
    # The same task without a practical length limit gives each example's full length.
    unlimited = build_task(cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_length": UNLIMITED})}))
    for split, dataset in examples.items():
        inputs = dataset.select_columns([*input_columns(task, dataset), *hidden(dataset)])
        features = encode_split(task, tokenizer, inputs, split, sources)
        full = encode_split(unlimited, tokenizer, inputs, split, sources)
        windowed = num_windowed(features)
        cut = Counter(features["example_id"])
        longer = {i for i, n in zip(full["example_id"], full["length"], strict=True) if n > limit}
        truncated = sum(1 for i in longer if cut[i] == 1)
        rate = truncated / max(1, len(dataset))
        report.facts.append(
            f"{split}: {len(longer)} of {len(dataset)} examples are longer than "
            f"data.max_length={limit}: {truncated} truncated ({100 * rate:.1f}%), "
            f"{windowed} split into windows"
        )
        if truncated:
            report.findings.append(
                Finding(
                    "warning",
                    split,
                    f"{truncated} examples ({100 * rate:.1f}%) are truncated at "
                    f"data.max_length={limit} (raise data.max_length to keep their ends)",
                )
            )


def format_report(report: DataReport) -> str:
    """Facts, then findings grouped by level (at most SHOWN_PER_KIND per message kind)."""
    lines = list(report.facts)
    shown: Counter[tuple[str, str]] = Counter()
    hidden_count: Counter[tuple[str, str]] = Counter()
    for finding in sorted(report.findings, key=lambda f: f.level != "error"):
        kind = (finding.level, finding.message.split(":")[0])
        shown[kind] += 1
        if shown[kind] > SHOWN_PER_KIND:
            hidden_count[kind] += 1
            continue
        lines.append(f"{finding.level:<8} {finding.where}: {finding.message}")
    for (level, prefix), n in hidden_count.items():
        lines.append(f"{level:<8} ... and {n} more like '{prefix}'")
    errors = report.num_errors
    warnings = len(report.findings) - errors
    lines.append(f"{errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)
