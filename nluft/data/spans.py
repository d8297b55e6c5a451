"""NER data annotated as character spans over raw text, in the shapes annotation tools export.

- `spans`: JSON Lines `{"text": ..., "entities": [{"start": 0, "end": 5, "type": "PER"}]}`
  (also `label` for `type`, or `[start, end, "PER"]` triples);
- `doccano`: Doccano's JSONL export, `{"text": ..., "label": [[0, 5, "PER"]]}` (newer versions:
  `entities` with `start_offset`/`end_offset`/`label`, read as `spans`);
- `label_studio`: Label Studio's JSON export, a list of tasks with `data.text` and
  `annotations[].result[].value{start, end, labels}` (the first annotation not cancelled);
- `brat`: brat standoff, `doc.ann` (`T1<TAB>PER 0 5<TAB>Alice`) beside `doc.txt`; a data file
  may name one `.ann` file or a directory of them. Each line of the text is one example.

Texts are cut into words by `ner.word_segmentation` (each CJK character a word by default) and the
spans become tags in `ner.tag_scheme`. A span that falls outside its text, overlaps another, or
starts or ends inside a word is kept out of the tags and listed in the example's `_span_errors`:
`nluft check-data` reports each at its file and line, `nluft train` refuses the data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from datasets import Dataset

from nluft.config import NerConfig
from nluft.errors import NluftError
from nluft.segmentation import segment
from nluft.tasks.ner import SPAN_ERRORS
from nluft.tasks.tag_schemes import OUTSIDE, from_bio

SPAN_FORMATS = ("spans", "doccano", "label_studio", "brat")
WHERE_COLUMN = "_where"  # "file:line" of each example, for error messages


class Span(NamedTuple):
    """One annotated entity: character offsets [start, end), type, and where it was written."""

    start: int
    end: int
    type: str
    where: str


class Document(NamedTuple):
    """One text to tag, its spans, where it is (`file:line`), and problems found while reading."""

    text: str
    spans: list[Span]
    where: str
    problems: list[str]


def detect_span_format(path: str, text_column: str) -> str | None:
    """The span format of a `.json`/`.jsonl`/`.ann` file or a brat directory, if it is one."""
    file = Path(path)
    if file.is_dir() or file.suffix.lower() == ".ann":
        return "brat"
    if file.suffix.lower() not in (".json", ".jsonl"):
        return None
    head = file.read_text(encoding="utf-8-sig", errors="replace").lstrip()
    if head.startswith("["):
        try:
            tasks = json.loads(head)
        except json.JSONDecodeError:
            return None
        first = tasks[0] if isinstance(tasks, list) and tasks else None
        if isinstance(first, dict) and "data" in first:
            if "annotations" in first or "completions" in first:
                return "label_studio"
        return None
    for line in head.splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return None
            break
    else:
        return None
    if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
        return None
    if isinstance(record.get("entities"), list):
        return "spans"
    if isinstance(record.get("label"), list) and all(
        isinstance(item, list) for item in record["label"]
    ):
        return "doccano"
    return None


def read_spans(path: str, fmt: str, text_column: str, ner: NerConfig) -> Dataset:
    """A span-annotated file (or brat directory) as NER examples: words and tags per text."""
    if fmt == "brat":
        documents = read_brat(Path(path))
    elif fmt == "label_studio":
        documents = read_label_studio(path, text_column)
    else:
        documents = read_jsonl_spans(path, text_column)
    if not documents:
        raise NluftError(f"{path}: no examples in file")
    columns: dict[str, list[Any]] = {
        ner.tokens_column: [],
        ner.tags_column: [],
        WHERE_COLUMN: [],
        SPAN_ERRORS: [],
    }
    for doc in documents:
        words, tags, problems = tag_words(doc, ner)
        columns[ner.tokens_column].append(words)
        columns[ner.tags_column].append(tags)
        columns[WHERE_COLUMN].append(doc.where)
        columns[SPAN_ERRORS].append(doc.problems + problems)
    return Dataset.from_dict(columns)


def tag_words(doc: Document, ner: NerConfig) -> tuple[list[str], list[str], list[str]]:
    """Words of the text, their tags in `ner.tag_scheme`, and the spans that could not be used."""
    words = segment(doc.text, ner.word_segmentation)
    first_word = {w.start: i for i, w in enumerate(words)}
    last_word = {w.end: i for i, w in enumerate(words)}
    tags = [OUTSIDE] * len(words)
    problems: list[str] = []
    taken: list[Span] = []
    for span in sorted(set(trimmed(doc.text, s) for s in doc.spans)):
        shown = f"{span.type} span [{span.start}, {span.end})"
        if not 0 <= span.start < span.end <= len(doc.text):
            problems.append(
                f"{span.where}{shown} is outside the text (length {len(doc.text)}); offsets are "
                "characters, end exclusive"
            )
            continue
        shown += f" {doc.text[span.start : span.end]!r}"
        clash = next((t for t in taken if t.start < span.end and span.start < t.end), None)
        if clash is not None:
            problems.append(
                f"{span.where}{shown} overlaps {clash.type} span [{clash.start}, {clash.end}); "
                "nested or overlapping entities cannot be tagged: keep one"
            )
            continue
        first, last = first_word.get(span.start), last_word.get(span.end)
        if first is None or last is None:
            problems.append(
                f"{span.where}{shown} starts or ends inside a word of the "
                f"{ner.word_segmentation} segmentation; fix the offsets or set "
                "ner.word_segmentation: char"
            )
            continue
        taken.append(span)
        tags[first : last + 1] = [f"B-{span.type}"] + [f"I-{span.type}"] * (last - first)
    return [w.text for w in words], from_bio(tags, ner.tag_scheme), problems


def trimmed(text: str, span: Span) -> Span:
    """The span without leading/trailing whitespace (tools often select a trailing space)."""
    start, end = span.start, span.end
    if 0 <= start < end <= len(text):
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
    return span._replace(start=start, end=end) if start < end else span


# --- JSON Lines (entities / Doccano) ------------------------------------------------------------


def read_jsonl_spans(path: str, text_column: str) -> list[Document]:
    documents = []
    lines = Path(path).read_text(encoding="utf-8-sig").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise NluftError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
            raise NluftError(f"{where}: expected an object with a '{text_column}' string")
        items = record.get("entities", record.get("label")) or []
        spans, problems = [], []
        for item in items if isinstance(items, list) else [items]:
            span = span_of(item, "")
            if span is None:
                problems.append(f"cannot read entity {item!r}; expected {{start, end, type}}")
            else:
                spans.append(span)
        documents.append(Document(record[text_column], spans, where, problems))
    return documents


def span_of(item: Any, where: str) -> Span | None:
    """An entity as `{start, end, type|label}`, Doccano's `{start_offset, end_offset, label}` or
    `[start, end, type]`; None when it is none of these."""
    if isinstance(item, list) and len(item) == 3:
        start, end, kind = item
    elif isinstance(item, dict):
        start = item.get("start", item.get("start_offset"))
        end = item.get("end", item.get("end_offset"))
        kind = item.get("type", item.get("label"))
    else:
        return None
    if not (isinstance(start, int) and isinstance(end, int) and isinstance(kind, str) and kind):
        return None
    return Span(start, end, kind, where)


# --- Label Studio -------------------------------------------------------------------------------


def read_label_studio(path: str, text_column: str) -> list[Document]:
    """Tasks of a Label Studio JSON export; each task's line is where its object starts."""
    raw = Path(path).read_text(encoding="utf-8-sig")
    try:
        tasks = json.loads(raw)
    except json.JSONDecodeError as err:
        raise NluftError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(tasks, list):
        raise NluftError(f"{path}: expected Label Studio's export, a JSON list of tasks")
    lines = task_lines(raw, len(tasks))
    documents = []
    for task, line in zip(tasks, lines, strict=True):
        where = f"{path}:{line}"
        data = task.get("data") if isinstance(task, dict) else None
        text = data.get(text_column) if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise NluftError(f"{where}: task has no data.{text_column} string; set data.text_column")
        spans, problems = [], []
        for result in first_annotation(task):
            value = result.get("value") if isinstance(result, dict) else None
            if not isinstance(value, dict) or "start" not in value:
                continue  # relations, choices and other result types are not entity spans
            labels = value.get("labels") or []
            span = span_of([value.get("start"), value.get("end"), labels[0] if labels else None], "")
            if span is None:
                problems.append(f"cannot read Label Studio result {value!r}")
            else:
                spans.append(span)
        documents.append(Document(text, spans, where, problems))
    return documents


def first_annotation(task: dict[str, Any]) -> list[Any]:
    """Results of the task's first annotation that was not cancelled (older exports: completions)."""
    for annotation in task.get("annotations") or task.get("completions") or []:
        if isinstance(annotation, dict) and not annotation.get("was_cancelled"):
            return list(annotation.get("result") or [])
    return []


def task_lines(raw: str, count: int) -> list[int]:
    """1-based line where each element of a top-level JSON list starts."""
    decoder = json.JSONDecoder()
    position = raw.index("[") + 1
    lines = []
    for _ in range(count):
        while raw[position] in " \t\r\n,":
            position += 1
        lines.append(raw.count("\n", 0, position) + 1)
        _, position = decoder.raw_decode(raw, position)
    return lines


# --- brat standoff ------------------------------------------------------------------------------


def read_brat(path: Path) -> list[Document]:
    """Every line of every `.txt` with the entities (`T` lines) of its `.ann` file."""
    files = sorted(path.glob("*.ann")) if path.is_dir() else [path]
    if not files:
        raise NluftError(f"{path}: no .ann files (brat standoff: doc.ann beside doc.txt)")
    documents: list[Document] = []
    for ann in files:
        txt = ann.with_suffix(".txt")
        if not txt.is_file():
            raise NluftError(f"{ann}: no {txt.name} beside it (brat keeps the text in .txt)")
        with open(txt, encoding="utf-8", newline="") as handle:
            text = handle.read()
        spans, problems = brat_spans(ann)
        documents += brat_lines(txt, text, spans, problems)
    return documents


def brat_spans(ann: Path) -> tuple[list[Span], list[str]]:
    """Text-bound annotations (`T` lines) of an `.ann` file; other kinds are skipped."""
    spans, problems = [], []
    for number, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.startswith("T"):
            continue  # relations, events, attributes, notes
        where = f"{ann.name}:{number} "
        fields = line.split("\t")
        kind, _, offsets = fields[1].partition(" ") if len(fields) > 1 else ("", "", "")
        if ";" in offsets:
            problems.append(f"{where}discontinuous entity {offsets!r} cannot be tagged")
            continue
        parts = offsets.split()
        if not kind or len(parts) != 2 or not all(p.isdigit() for p in parts):
            problems.append(f"{where}cannot read {line!r}; expected 'T1<TAB>TYPE START END<TAB>text'")
            continue
        spans.append(Span(int(parts[0]), int(parts[1]), kind, where))
    return spans, problems


def brat_lines(txt: Path, text: str, spans: list[Span], problems: list[str]) -> list[Document]:
    """One example per non-blank line of the text, spans shifted to line offsets."""
    documents, offset = [], 0
    for number, line in enumerate(text.split("\n"), start=1):
        end = offset + len(line)
        mine = [s for s in spans if offset <= s.start < end or (s.start == end and s.end == end)]
        here = [s._replace(start=s.start - offset, end=s.end - offset) for s in mine]
        errors = []
        for span in here:
            if span.end > len(line):
                errors.append(f"{span.where}{span.type} span crosses the end of line {number}")
        here = [s for s in here if s.end <= len(line)]
        if line.strip():
            documents.append(Document(line, here, f"{txt}:{number}", errors))
        offset = end + 1
    if documents:  # file-level problems go with the first example
        documents[0].problems.extend(problems)
        documents[0].problems.extend(
            f"{s.where}{s.type} span [{s.start}, {s.end}) is outside {txt.name} "
            f"(length {len(text)})"
            for s in spans
            if not 0 <= s.start < len(text) or s.end > len(text)
        )
    return documents
