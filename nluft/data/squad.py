"""SQuAD v1.1 / v2.0 JSON (`data` -> `paragraphs` -> `qas`) read into one flat row per question.

Rows carry `id, title, question, context, answers{text, answer_start}, is_impossible` (the
Hugging Face `squad_v2` layout) and a row column, the 0-based line of the question's `"id"` in the
file, so errors can name `file:line` (pretty-printed files; the official ones are one line).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Sequence, Value

FEATURES = {
    "id": Value("string"),
    "title": Value("string"),
    "question": Value("string"),
    "context": Value("string"),
    "answers": {"text": Sequence(Value("string")), "answer_start": Sequence(Value("int64"))},
    "is_impossible": Value("bool"),
}
ID_PATTERN = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')
HEAD_PATTERN = re.compile(r'^\s*\{\s*"(data|version)"\s*:')


class SquadError(ValueError):
    """A structural problem in a SQuAD file (the loader adds the file name)."""


def is_squad_file(path: str) -> bool:
    """True for a JSON document whose top level is an object with a `data` list."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return is_squad_version(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def is_squad_version(path: str, mtime_ns: int, size: int) -> bool:
    """`is_squad_file` of one version of a file (parsed once, re-read when it changes)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            head = handle.read(256)
        if not HEAD_PATTERN.match(head):
            return False
        document = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and isinstance(document.get("data"), list)


def read_squad(path: str, row_column: str) -> Dataset:
    """All questions of a SQuAD file (answers empty for unanswerable ones); `row_column` = line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SquadError(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise SquadError(f"line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise SquadError("expected a SQuAD object with a top-level 'data' list")
    lines = id_lines(text)
    rows = [
        {**flat_row(question, paragraph, article, lines), row_column: lines.get(qid_of(question), 0)}
        for article in document["data"]
        for paragraph in need(article, "paragraphs", list, "an article")
        for question in need(paragraph, "qas", list, "a paragraph")
    ]
    if not rows:
        raise SquadError("no questions in file")
    return Dataset.from_list(rows, features=Features({**FEATURES, row_column: Value("int64")}))


def flat_row(
    question: Any, paragraph: dict[str, Any], article: dict[str, Any], lines: dict[str, int]
) -> dict[str, Any]:
    """One question with its context and answers in the flat layout."""
    qid = qid_of(question)
    where = f"line {lines.get(qid, 0) + 1}: question {qid!r}"
    impossible = question.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise SquadError(f"{where}: 'is_impossible' must be true or false")
    answers = need(question, "answers", list, where) if not impossible else []
    for answer in answers:
        if not isinstance(answer, dict) or not {"text", "answer_start"} <= set(answer):
            raise SquadError(f"{where}: each answer needs 'text' and 'answer_start'")
        need(answer, "text", str, f"{where}: an answer")
        if isinstance(answer["answer_start"], bool):  # JSON true is no offset (bool is an int)
            raise SquadError(f"{where}: an answer: 'answer_start' must be a character offset")
        need(answer, "answer_start", int, f"{where}: an answer")
    return {
        "id": qid,
        "title": str(article.get("title", "")),
        "question": str(need(question, "question", str, where)),
        "context": need(paragraph, "context", str, where),
        "answers": {
            "text": [a["text"] for a in answers],
            "answer_start": [a["answer_start"] for a in answers],
        },
        "is_impossible": impossible,
    }


def qid_of(question: Any) -> str:
    return str(need(question, "id", (str, int), "a question"))


def need(node: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`node[key]`, which must exist and have type `kind`."""
    if not isinstance(node, dict) or key not in node:
        raise SquadError(f"{where}: missing key '{key}' (SQuAD layout: data/paragraphs/qas)")
    if not isinstance(node[key], kind):
        raise SquadError(f"{where}: '{key}' has the wrong type ({type(node[key]).__name__})")
    return node[key]


def id_lines(text: str) -> dict[str, int]:
    """0-based line of each question id's first occurrence in the raw file."""
    lines: dict[str, int] = {}
    line, pos = 0, 0
    for match in ID_PATTERN.finditer(text):
        line += text.count("\n", pos, match.start())
        pos = match.start()
        lines.setdefault(json.loads(f'"{match.group(1)}"'), line)
    return lines
