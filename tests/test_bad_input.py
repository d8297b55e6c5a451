"""The bad-input corpus: malformed configs, data files and CLI arguments.

Each case runs the real `nluft` entry point (in this process, for speed) against an existing run
directory and must: exit 2, print exactly one line on stderr naming the key, file or line, print
no traceback, and leave the run directory exactly as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import sentiment_rows, write_csv

from launch.cli import main as nluft_main

Files = Callable[[Path], dict[str, str]]  # writes files into a folder; returns config overrides


@dataclass
class Case:
    name: str
    expect: str  # a fragment the one-line error must contain ({dir} is the case's folder)
    overrides: list[str]
    files: Files | None = None
    config_text: str | None = None  # replaces the YAML file's text
    args: list[str] | None = None  # replaces the whole command line ({cfg}, {run}, {dir})
    env: dict[str, str] | None = None


def csv_file(name: str, rows: list[dict], key: str = "train_file") -> Files:
    def write(d: Path) -> dict[str, str]:
        write_csv(d / name, rows)
        return {f"data.{key}": str(d / name)}

    return write


def raw_file(name: str, data: bytes | str, key: str = "train_file", **extra: str) -> Files:
    def write(d: Path) -> dict[str, str]:
        path = d / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return {f"data.{key}": str(path), **{k.replace("__", "."): v for k, v in extra.items()}}

    return write


def with_validation(name: str, data: str, **extra: str) -> Files:
    def write(d: Path) -> dict[str, str]:
        train = raw_file(name.replace("val", "train"), VALID[name.split(".")[-1]])(d)
        val = raw_file(name, data, key="validation_file", **extra)(d)
        return {**train, **val, **{k.replace("__", "."): v for k, v in extra.items()}}

    return write


CONLL_OK = "-DOCSTART- O\n\nAnna B-PER\nlives O\nin O\nOslo B-LOC\n\nBob B-PER\nruns O\n\n" * 8
RE_OK = "".join(
    json.dumps(
        {
            "text": t,
            "subject": {"start": 0, "end": 4},
            "object": {"start": 14, "end": 18},
            "relation": r,
        }
    )
    + "\n"
    for t, r in [("Anna lives in Oslo now", "lives_in"), ("Bert works at Acme Inc", "works_at")] * 8
)
SQUAD_OK = json.dumps(
    {
        "version": "v2.0",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "Anna lives in Oslo.",
                        "qas": [
                            {
                                "id": f"q{i}",
                                "question": "Where does Anna live?",
                                "is_impossible": False,
                                "answers": [{"text": "Oslo", "answer_start": 14}],
                            }
                            for i in range(6)
                        ],
                    }
                ],
            }
        ],
    }
)
VALID = {"conll": CONLL_OK, "jsonl": RE_OK, "json": SQUAD_OK}
NER = {"task": "ner"}
RE = {"task": "relation", "data__label_column": "relation"}
QA = {"task": "qa", "data__file_format": "squad", "data__max_length": "128", "qa__doc_stride": "32"}

GOOD_ROWS = sentiment_rows(30)
ONE_LABEL = [{"text": "fine", "label": "pos"}] * 20
UNSEEN = sentiment_rows(10, 4)
UNSEEN[4]["label"] = "neutral"

CASES = [
    # --- config files and overrides ---------------------------------------------------------
    Case(
        "yaml syntax", "YAML syntax error", [], config_text="task: classification\ntrain: [1, 2\n"
    ),
    Case("yaml not a mapping", "must be a YAML mapping", [], config_text="- a\n- b\n"),
    Case("yaml empty", "config file is empty", [], config_text=""),
    Case("yaml binary", "cfg.yaml", [], config_text="\x00\x01\x02: [\n"),
    Case("key at wrong level", "did you mean 'train.learning_rate'", ["learning_rate=0.1"]),
    Case("key typo", "did you mean 'train.learning_rate'", ["train.learnin_rate=0.1"]),
    Case("unknown section", "unknown key 'trainer'", ["trainer.seed=1"]),
    Case(
        "wrong type int",
        "train.per_device_train_batch_size",
        ["train.per_device_train_batch_size=abc"],
    ),
    Case("negative lr", "train.learning_rate", ["train.learning_rate=-1"]),
    Case("max_length tiny", "data.max_length", ["data.max_length=2"]),
    Case("epochs list", "train.num_train_epochs", ["train.num_train_epochs=[1]"]),
    Case("precision fp8", "train.precision", ["train.precision=fp8"]),
    Case("scheduler poly", "train.lr_scheduler_type", ["train.lr_scheduler_type=poly"]),
    Case("unknown strategy", "strategy.name", ["strategy.name=horovod"]),
    Case("fp16 on cpu", "fp16 needs a CUDA GPU", ["train.precision=fp16"]),
    Case("zero with ddp", "strategy.zero_stage", ["strategy.name=ddp", "strategy.zero_stage=2"]),
    Case(
        "param offload stage 2",
        "strategy.offload_params",
        ["strategy.name=deepspeed", "strategy.zero_stage=2", "strategy.offload_params=true"],
    ),
    Case("fsdp key with single", "strategy.fsdp_cpu_offload", ["strategy.fsdp_cpu_offload=true"]),
    Case(
        "two data sources",
        "only one of data.train_file and data.dataset_name",
        ["data.dataset_name=glue"],
    ),
    Case("no data source", "set data.train_file or data.dataset_name", ["data.train_file=null"]),
    Case("unknown task", "unknown task 'clasification'", ["task=clasification"]),
    Case("bad override syntax", "expected key=value", ["train.seed"]),
    Case("override into value", "train.seed", ["train.seed.x=1"]),
    Case("cuda without gpu", "train.device", ["train.device=cuda"]),
    Case(
        "early stopping zero", "train.early_stopping_patience", ["train.early_stopping_patience=0"]
    ),
    Case("class weights length", "class_weights", ["classification.class_weights=[1.0, 2.0, 3.0]"]),
    Case("single with 2 ranks", "WORLD_SIZE=2", [], env={"WORLD_SIZE": "2", "RANK": "0"}),
    # --- data files ---------------------------------------------------------------------------
    Case("missing train file", "nope.csv", ["data.train_file=nope.csv"]),
    Case("empty csv", "file is empty", [], files=raw_file("empty.csv", "")),
    Case("no text column", "set data.text_column", ["data.text_column=sentence"]),
    Case(
        "malformed jsonl",
        "bad.jsonl:2",
        [],
        files=raw_file("bad.jsonl", '{"text": "a", "label": "x"}\n{oops\n'),
    ),
    Case("unseen label", "val.csv:6", [], files=csv_file("val.csv", UNSEEN, "validation_file")),
    Case("unknown extension", "cannot tell the format", [], files=raw_file("data.xlsx", "a,b\n")),
    Case(
        "latin-1 csv",
        "latin.csv",
        [],
        files=raw_file("latin.csv", b"text,label\ncaf\xe9,positive\n"),
    ),
    Case("one label only", "only one label", [], files=csv_file("one.csv", ONE_LABEL)),
    Case(
        "empty label",
        "empty.csv:3",
        [],
        files=raw_file("empty.csv", "text,label\ngood,pos\nbad,\n" + "ok,neg\nfine,pos\n" * 15),
    ),
    Case("corrupt parquet", "bad.parquet", [], files=raw_file("bad.parquet", b"PAR1 not really")),
    Case(
        "json array in jsonl", "array.jsonl", [], files=raw_file("array.jsonl", '[{"text": "a"}]\n')
    ),
    Case(
        "conll malformed line",
        "is not a BIO tag",
        [],
        files=raw_file(
            "bad.conll", "Anna B-PER\nlives O\nOslo B-LOC extra junk here\n\n" * 12, **NER
        ),
    ),
    Case(
        "conll unseen tag",
        "val.conll:2",
        [],
        files=with_validation("val.conll", "Anna B-PER\nOslo B-CITY\n\n", **NER),
    ),
    Case("conll empty file", "file is empty", [], files=raw_file("e.conll", "", **NER)),
    Case(
        "re span out of range",
        "span.jsonl:1",
        [],
        files=raw_file(
            "span.jsonl",
            json.dumps(
                {
                    "text": "Anna",
                    "subject": {"start": 0, "end": 4},
                    "object": {"start": 10, "end": 20},
                    "relation": "x",
                }
            )
            + "\n"
            + RE_OK,
            **RE,
        ),
    ),
    Case(
        "re overlapping spans",
        "ovl.jsonl:1",
        [],
        files=raw_file(
            "ovl.jsonl",
            json.dumps(
                {
                    "text": "Anna lives in Oslo",
                    "subject": {"start": 0, "end": 10},
                    "object": {"start": 5, "end": 18},
                    "relation": "x",
                }
            )
            + "\n"
            + RE_OK,
            **RE,
        ),
    ),
    Case(
        "squad answer not in context",
        "squad.json",
        [],
        files=raw_file(
            "squad.json", SQUAD_OK.replace('"answer_start": 14', '"answer_start": 3'), **QA
        ),
    ),
    Case(
        "squad malformed json", "broken.json", [], files=raw_file("broken.json", '{"data": [', **QA)
    ),
    # --- command-line arguments ------------------------------------------------------------------
    Case(
        "resume and overwrite",
        "--resume and --overwrite",
        [],
        args=["train", "{cfg}", "--resume", "--overwrite"],
    ),
    Case("eval a folder that is no run", "not an nluft run directory", [], args=["eval", "{dir}"]),
    Case("eval a run without export", "no export yet", [], args=["eval", "{run}"]),
    Case(
        "predict missing input",
        "--input: cannot read",
        [],
        args=["predict", "{run}", "--input", "{dir}/nope.jsonl"],
    ),
    Case(
        "predict bad json line",
        "in.jsonl:2",
        [],
        files=raw_file("in.jsonl", '{"text": "a"}\n{bad\n'),
        args=["predict", "{run}", "--input", "{dir}/in.jsonl"],
    ),
    # --- compute options (issue 15) -----------------------------------------------------------
    Case(
        "torch_compile under deepspeed",
        "train.torch_compile: supported with strategy.name single or ddp",
        ["train.torch_compile=true", "strategy.name=deepspeed"],
    ),
    Case(
        "flash attention on the cpu",
        "model.attn_implementation: flash_attention_2 needs a CUDA GPU",
        ["model.attn_implementation=flash_attention_2", "train.device=cpu"],
    ),
    Case("attention typo", "model.attn_implementation", ["model.attn_implementation=flash"]),
    Case("pad multiple zero", "data.pad_to_multiple_of", ["data.pad_to_multiple_of=0"]),
]


@pytest.fixture(scope="module")
def existing_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[Path, Path]:
    """A run directory that already holds a run, and the base config that points at it."""
    root = tmp_path_factory.mktemp("existing")
    train = write_csv(root / "train.csv", sentiment_rows(40))
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = {
        "task": "classification",
        "output_dir": str(run),
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train_file": str(train), "max_length": 32, "cache_dir": str(root / "cache")},
        "tracking": {"progress_bar": False},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    base = root / "base.yaml"
    base.write_text(yaml.safe_dump(cfg))
    return run, base


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(run.rglob("*"))
    }


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_touches_nothing(
    case: Case,
    existing_run: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, base = existing_run
    for key, value in (case.env or {}).items():
        monkeypatch.setenv(key, value)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(case.config_text if case.config_text is not None else base.read_text())
    extra = case.files(tmp_path) if case.files else {}
    overrides = [f"{k}={v}" for k, v in extra.items()] + case.overrides
    if case.args is not None:
        argv = [a.format(cfg=cfg, run=run, dir=tmp_path) for a in case.args]
    else:
        argv = ["train", str(cfg), *overrides, "--resume"]
    before = snapshot(run)
    capsys.readouterr()
    code = nluft_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0, err
    assert err.startswith("nluft: error: ") and "Traceback" not in err
    assert case.expect.format(dir=tmp_path) in err, err
    assert snapshot(run) == before, "the existing run directory was modified"
