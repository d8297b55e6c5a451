"""`nluft check-data`: planted problems are found, located, and set the exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import nluft, sentiment_rows, write_csv
from test_ner import tagged_sentences, write_conll

from nluft.cli import main
from nluft.config import load_config
from nluft.data.checks import DataReport, check_data, format_report
from nluft.models import build_tokenizer
from nluft.tasks import build_task


def write_config(tmp_path: Path, model_dir: Path, task: str, data: dict) -> Path:
    cfg = {
        "task": task,
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(model_dir)},
        "data": {"cache_dir": str(tmp_path / "cache"), "max_length": 16, **data},
        **({"ner": {"stride": 4}} if task == "ner" else {}),
    }
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def report_of(config: Path) -> DataReport:
    cfg = load_config(config)
    task = build_task(cfg)
    return check_data(cfg, task, build_tokenizer(cfg.model, task))


def messages(report: DataReport, level: str) -> list[str]:
    return [f"{f.where}: {f.message}" for f in report.findings if f.level == level]


@pytest.fixture()
def ner_files(tmp_path: Path) -> dict[str, Path]:
    """Train with an I- after O and a long sentence; validation with an unknown tag and a copy."""
    train = tagged_sentences(12, seed=1)
    train[3][0] = (train[3][0][0], "I-PER")  # BIO forbids I-PER at a sentence start
    train.append([("Paris", "B-LOC")] + [("and", "O"), ("Lima", "B-LOC")] * 12)
    dev = tagged_sentences(3, seed=2)
    dev[1][2] = (dev[1][2][0], "B-FOOD")
    dev.append(train[5])  # leaks a training sentence into validation
    return {
        "train": write_conll(tmp_path / "train.conll", train),
        "validation": write_conll(tmp_path / "dev.conll", dev),
        "train_line": 3 + sum(len(s) + 1 for s in train[:3]),  # first token of train[3]
        "dev_line": 3 + len(dev[0]) + 1 + 2,  # third token of dev[1]
    }


def test_ner_checks_find_bad_sequences_unknown_tags_and_leaks(
    tmp_path: Path, tiny_model_dir: Path, ner_files: dict
) -> None:
    data = {
        "train_file": str(ner_files["train"]),
        "validation_file": str(ner_files["validation"]),
        "test_split_percentage": 0,
    }
    report = report_of(write_config(tmp_path, tiny_model_dir, "ner", data))
    errors = messages(report, "error")
    train, dev = ner_files["train"], ner_files["validation"]
    assert f"{train}:{ner_files['train_line']}: invalid tag sequence: I-PER after O" in "\n".join(
        errors
    )
    assert any(e.startswith(f"{dev}:{ner_files['dev_line']}: tag 'B-FOOD'") for e in errors)
    assert len(errors) == 2, errors  # prepare's first error is not reported twice
    warnings = messages(report, "warning")
    assert any(f"{dev}:" in w and "duplicate across splits" in w for w in warnings), warnings
    facts = "\n".join(report.facts)
    assert "train: 1 of 13 examples are longer than data.max_length=16: 0 truncated" in facts
    assert "1 split into windows" in facts and "LOC" in facts and "PER" in facts


def test_classification_checks_find_empty_truncated_imbalanced_and_unknown(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rows = [r for r in sentiment_rows(200, seed=5) if r["label"] == "positive"][:24]
    rows += [{"text": "the plot was dull and bad", "label": "negative"}]
    rows += [{"text": "", "label": "positive"}]  # line 27 of the file (header is line 1)
    rows += [{"text": " ".join(["great"] * 40), "label": "positive"}]
    dev = [rows[3], {"text": "a new one", "label": "neutral"}]
    train_path = write_csv(tmp_path / "train.csv", rows)
    dev_path = write_csv(tmp_path / "dev.csv", dev)
    data = {
        "train_file": str(train_path),
        "validation_file": str(dev_path),
        "test_split_percentage": 0,
    }
    report = report_of(write_config(tmp_path, tiny_model_dir, "classification", data))
    assert messages(report, "error") == [
        f"{dev_path}:3: label 'neutral' is not in the label set ['negative', 'positive']"
    ]
    warnings = "\n".join(messages(report, "warning"))
    assert f"{train_path}:27: empty input in column 'text'" in warnings
    assert f"{dev_path}:2: duplicate across splits: validation repeats train example" in warnings
    assert "imbalanced labels: 'positive' has 26 examples, 'negative' only 1" in warnings
    assert "'negative': 13.5" in warnings  # 27 / (2 * 1): inverse-frequency weight
    assert "1 examples (3.7%) are truncated at data.max_length=16" in warnings
    assert "1 error(s)" in format_report(report)


def test_cli_exit_codes(
    tmp_path: Path, tiny_model_dir: Path, ner_files: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_config(tmp_path, tiny_model_dir, "ner", {"train_file": str(ner_files["train"])})
    # The real CLI once in a subprocess; the other exit codes through its main() in-process.
    proc = nluft("check-data", str(bad), "data.validation_file=" + str(ner_files["validation"]))
    assert proc.returncode == 1, proc.stderr
    assert "invalid tag sequence" in proc.stdout and "error(s)" in proc.stdout
    clean = write_conll(tmp_path / "clean.conll", tagged_sentences(30, seed=7) * 2)
    assert main(["check-data", str(bad), f"data.train_file={clean}"]) == 0
    out = capsys.readouterr().out
    assert "0 error(s)" in out and "duplicate across splits" in out  # warnings alone: exit 0
    assert main(["check-data", str(bad), "data.max_lenght=8"]) == 2
    assert "did you mean 'data.max_length'" in capsys.readouterr().err
