"""Property-based tests of the data readers (CoNLL, SQuAD, JSON Lines, CSV).

Any valid document round-trips: what we write is what the reader gives back. Any mangled file
(random bytes, truncation, a wrong column count, a missing key, a value of the wrong type)
either reads or fails with one `NluftError` line that names the file, never another exception.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nluft.config import DataConfig, NerConfig
from nluft.data.conll import DOCSTART, read_conll
from nluft.data.loading import ROW_COLUMN, read_file
from nluft.errors import NluftError

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Fewer examples where `datasets` builds a table (about 0.1 s each).
TABLE_SETTINGS = settings(SETTINGS, max_examples=20)
SEPARATORS = " \t\r\n\f\v"  # what separates columns and lines in a CoNLL file
# Printable text with no column/line separators (and no lone surrogates: not encodable).
WORD = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=SEPARATORS),
    min_size=1,
    max_size=6,
).filter(lambda w: w != DOCSTART)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
MANGLED = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def assert_one_line_naming(err: NluftError, path: Path) -> None:
    message = str(err)
    assert message.startswith(str(path)) and "\n" not in message, message


def read_or_one_line(path: Path, data: DataConfig, ner: NerConfig | None = None) -> Any:
    """The reader's Dataset, or None after checking its error is one line naming the file."""
    try:
        return read_file(str(path), data, ner)
    except NluftError as err:
        assert_one_line_naming(err, path)
        return None


# --- CoNLL ---------------------------------------------------------------------------------------

SENTENCES = st.lists(
    st.lists(st.tuples(WORD, WORD), min_size=1, max_size=5), min_size=1, max_size=5
)


def conll_text(
    sentences: list[list[tuple[str, str]]], sep: str, newline: str
) -> tuple[str, list[int]]:
    """A CoNLL document (a -DOCSTART- line, TOKEN POS TAG) and each sentence's first line."""
    lines, starts = [f"{DOCSTART}{sep}O", ""], []
    for sentence in sentences:
        starts.append(len(lines) + 1)
        lines += [sep.join([token, "X", tag]) for token, tag in sentence] + [""]
    return newline.join(lines), starts


@SETTINGS
@given(SENTENCES, st.sampled_from([" ", "\t", "  "]), st.sampled_from(["\n", "\r\n"]))
def test_conll_round_trips(
    tmp_path: Path, sentences: list[list[tuple[str, str]]], sep: str, newline: str
) -> None:
    text, starts = conll_text(sentences, sep, newline)
    path = tmp_path / "d.conll"
    path.write_bytes(text.encode("utf-8"))
    data = read_conll(str(path), NerConfig())
    assert data["tokens"] == [[token for token, _ in s] for s in sentences]
    assert data["tags"] == [[tag for _, tag in s] for s in sentences]
    assert data["_line"] == starts


@SETTINGS
@given(SENTENCES, st.data())
def test_conll_line_with_one_column_is_named(
    tmp_path: Path, sentences: list[list[tuple[str, str]]], data: st.DataObject
) -> None:
    text, starts = conll_text(sentences, " ", "\n")
    lines = text.split("\n")
    token_lines = [
        n for start, s in zip(starts, sentences, strict=True) for n in range(start, start + len(s))
    ]
    bad = data.draw(st.sampled_from(token_lines))
    lines[bad - 1] = lines[bad - 1].split(" ")[0]  # the token alone, no tag column
    path = tmp_path / "d.conll"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        read_conll(str(path), NerConfig())
    except NluftError as err:
        assert str(err).startswith(f"{path}:{bad}: expected 'TOKEN ... TAG'"), str(err)
        assert "\n" not in str(err)
    else:
        raise AssertionError("a line without a tag column was read")


@SETTINGS
@given(MANGLED)
def test_mangled_conll_reads_or_names_the_file(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "d.conll"
    path.write_bytes(raw)
    data = read_or_one_line(path, DataConfig(), NerConfig())
    if data is not None:
        assert all(len(t) == len(g) > 0 for t, g in zip(data["tokens"], data["tags"], strict=True))


@SETTINGS
@given(SENTENCES, st.data())
def test_truncated_conll_reads_a_prefix_or_names_the_file(
    tmp_path: Path, sentences: list[list[tuple[str, str]]], data: st.DataObject
) -> None:
    raw = conll_text(sentences, "\t", "\n")[0].encode("utf-8")
    cut = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "d.conll"
    path.write_bytes(cut)
    read = read_or_one_line(path, DataConfig(), NerConfig())
    if read is not None:
        tokens = [token for s in sentences for token, _ in s]
        got = [token for s in read["tokens"] for token in s]
        assert got == tokens[: len(got)] or got[:-1] == tokens[: len(got) - 1]


# --- SQuAD ---------------------------------------------------------------------------------------


@st.composite
def squad_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A SQuAD v2.0 document whose answers are spans of their contexts; ids are unique."""
    articles, count = [], 0
    for _ in range(draw(st.integers(1, 3))):
        paragraphs = []
        for _ in range(draw(st.integers(1, 3))):
            context = draw(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1))
            qas = []
            for _ in range(draw(st.integers(1, 3))):
                answers = []
                for _ in range(draw(st.integers(0, 2))):
                    start = draw(st.integers(0, len(context) - 1))
                    end = draw(st.integers(start + 1, len(context)))
                    answers.append({"text": context[start:end], "answer_start": start})
                qid = f"{draw(TEXT)}#{count}"
                count += 1
                question = {"id": qid, "question": draw(TEXT), "answers": answers}
                qas.append({**question, "is_impossible": not answers})
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": draw(TEXT), "paragraphs": paragraphs})
    return {"version": "v2.0", "data": articles}


def questions_of(document: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    return [
        (question, paragraph["context"], article["title"])
        for article in document["data"]
        for paragraph in article["paragraphs"]
        for question in paragraph["qas"]
    ]


SQUAD = DataConfig(file_format="squad")


@SETTINGS
@given(squad_documents(), st.sampled_from([None, 1, 2]), st.booleans())
def test_squad_round_trips_with_the_line_of_each_id(
    tmp_path: Path, document: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    text = json.dumps(document, indent=indent, ensure_ascii=ascii_only)
    path = tmp_path / "d.json"
    path.write_text(text, encoding="utf-8")
    rows = read_file(str(path), SQUAD).to_list()
    lines = text.split("\n")
    expected = []
    for question, context, title in questions_of(document):
        needle = '"id": ' + json.dumps(question["id"], ensure_ascii=ascii_only)
        line = next(n for n, content in enumerate(lines) if needle in content)
        answers = question["answers"]
        expected.append(
            {
                "id": question["id"],
                "title": title,
                "question": question["question"],
                "context": context,
                "answers": {
                    "text": [a["text"] for a in answers],
                    "answer_start": [a["answer_start"] for a in answers],
                },
                "is_impossible": question["is_impossible"],
                ROW_COLUMN: line,
            }
        )
    assert rows == expected


# Values of the wrong type for any key of a SQuAD document.
WRONG = st.sampled_from([None, 1.5, -3, True, "x", [], {}, [1], {"a": 1}])


def nodes(value: Any) -> list[Any]:
    """Every dict and list inside a JSON value (the value itself first)."""
    if isinstance(value, dict):
        return [value, *(node for child in value.values() for node in nodes(child))]
    if isinstance(value, list):
        return [value, *(node for child in value for node in nodes(child))]
    return []


@SETTINGS
@given(squad_documents(), st.data())
def test_squad_with_a_missing_key_or_wrong_type_reads_or_names_the_file(
    tmp_path: Path, document: dict[str, Any], data: st.DataObject
) -> None:
    document = copy.deepcopy(document)  # hypothesis replays the drawn value: mutate a copy
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from([n for n in nodes(document) if n]))
        if isinstance(target, dict):
            key = data.draw(st.sampled_from(sorted(target)))
            if data.draw(st.booleans()):
                del target[key]
            else:
                target[key] = data.draw(WRONG)
        else:
            target[data.draw(st.integers(0, len(target) - 1))] = data.draw(WRONG)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    rows = read_or_one_line(path, SQUAD)
    if rows is not None:
        for row in rows:
            assert isinstance(row["question"], str) and isinstance(row["context"], str)
            assert all(isinstance(s, int) for s in row["answers"]["answer_start"])


@TABLE_SETTINGS
@given(st.one_of(MANGLED, squad_documents().map(lambda d: json.dumps(d).encode()[:-7])))
def test_mangled_squad_reads_or_names_the_file(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(raw)
    read_or_one_line(path, SQUAD)
    read_or_one_line(path, DataConfig())  # auto: SQuAD when it looks like it, else JSON


# --- JSON Lines and CSV --------------------------------------------------------------------------

LABEL = st.one_of(st.sampled_from(["NA", "None", "null", "n/a", "positive", "-"]), TEXT)
ROWS = st.lists(st.fixed_dictionaries({"text": TEXT, "label": LABEL}), min_size=1, max_size=8)


@TABLE_SETTINGS
@given(ROWS)
def test_jsonl_round_trips(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert read_file(str(path), DataConfig()).to_list() == rows


def is_text(value: str) -> bool:
    """Not a number: CSV has no types, and a column of numbers reads as numbers."""
    try:
        float(value)
    except ValueError:
        return True
    return False


@TABLE_SETTINGS
@given(ROWS, st.sampled_from([",", "\t"]))
def test_csv_round_trips(tmp_path: Path, rows: list[dict[str, str]], delimiter: str) -> None:
    # An empty cell is a missing value; any other text, "NA" and "None" included, is text.
    assume(all(is_text(v) for row in rows for v in row.values()))
    path = tmp_path / ("d.csv" if delimiter == "," else "d.tsv")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"], delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    got = read_file(str(path), DataConfig()).to_list()
    assert got == [{k: v if v != "" else None for k, v in row.items()} for row in rows]


@TABLE_SETTINGS
@given(MANGLED, st.sampled_from(["d.jsonl", "d.json", "d.csv", "d.tsv"]))
def test_mangled_table_reads_or_names_the_file(tmp_path: Path, raw: bytes, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(raw)
    read_or_one_line(path, DataConfig())


@TABLE_SETTINGS
@given(ROWS, st.data())
def test_truncated_or_ragged_table_reads_or_names_the_file(
    tmp_path: Path, rows: list[dict[str, str]], data: st.DataObject
) -> None:
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    path = tmp_path / "d.jsonl"
    path.write_bytes(raw[: data.draw(st.integers(0, len(raw)))])
    read_or_one_line(path, DataConfig())
    # A CSV whose rows have more or fewer cells than the header.
    lines = ["text,label", *(f"{i},{'x,' * data.draw(st.integers(0, 3))}y" for i in range(4))]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(lines), encoding="utf-8")
    read_or_one_line(path, DataConfig())
