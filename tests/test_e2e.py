"""The real CLI end to end on a tiny random BERT: train, eval, predict, pipeline, resume, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, nluft


@pytest.fixture(scope="module")
def trained_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sentiment_files: dict[str, Path]
) -> Path:
    import yaml

    tmp = tmp_path_factory.mktemp("e2e")
    cfg = {
        "task": "classification",
        "output_dir": str(tmp / "run"),
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {
            "train_file": str(sentiment_files["train"]),
            "validation_file": str(sentiment_files["validation"]),
            "test_file": str(sentiment_files["test"]),
            "max_length": 32,
            "cache_dir": str(tmp / "cache"),
        },
        "train": {
            "learning_rate": 3e-3,
            "num_train_epochs": 4,
            "per_device_train_batch_size": 16,
            "eval_strategy": "epoch",
            "logging_steps": 5,
        },
        "tracking": {"progress_bar": False},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = nluft("train", str(path), check=True)
    assert "export:" in proc.stdout
    return tmp / "run"


def test_training_learns_and_writes_the_run_dir(trained_run: Path) -> None:
    test = json.loads((trained_run / "results" / "test.json").read_text())
    assert test["accuracy"] >= 0.9, test
    for name in (
        "config.yaml",
        "plan.json",
        "metrics.jsonl",
        "export/model.safetensors",
        "results/test_confusion_matrix.json",
    ):
        assert (trained_run / name).exists(), name
    records = [
        json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()
    ]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)), "each logged step once, in order"
    assert {"loss", "learning_rate", "grad_norm", "examples_per_s", "padding_efficiency"} <= set(
        records[0]
    )


def test_eval_json_reproduces_the_final_test_metrics(trained_run: Path) -> None:
    proc = nluft("eval", str(trained_run), "--split", "test", "--json", check=True)
    metrics = json.loads(proc.stdout)
    saved = json.loads((trained_run / "results" / "test.json").read_text())
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(saved["loss"], rel=1e-5)


def test_predict_gives_label_names_and_scores(trained_run: Path, tmp_path: Path) -> None:
    proc = nluft(
        "predict", str(trained_run), "--text", "the film was wonderful and superb", check=True
    )
    row = json.loads(proc.stdout)
    assert row["label"] == "positive" and 0.5 < row["score"] <= 1.0
    assert set(row["scores"]) == {"negative", "positive"}
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(
        '{"text": "the plot was awful and dull", "id": 7}\n{"text": "great and brilliant"}\n'
    )
    rows = [
        json.loads(line)
        for line in nluft(
            "predict", str(trained_run), "--input", str(inputs), check=True
        ).stdout.splitlines()
    ]
    assert [r["label"] for r in rows] == ["negative", "positive"] and rows[0]["id"] == 7


def test_transformers_pipeline_loads_the_export(trained_run: Path) -> None:
    import transformers

    classify = transformers.pipeline(
        "text-classification", model=str(trained_run / "export"), device="cpu"
    )
    out = classify(["the story was boring and terrible", "the cast was charming and funny"])
    assert [o["label"] for o in out] == ["negative", "positive"]


def test_existing_run_dir_is_not_overwritten(trained_run: Path) -> None:
    proc = nluft("train", str(trained_run / "config.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--resume" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_prints_every_derived_value(tiny_config: Path) -> None:
    proc = nluft(
        "train", str(tiny_config), "train.gradient_accumulation_steps=2", "--dry-run", check=True
    )
    for key in (
        "device: cpu",
        "precision: fp32",
        "world_size: 1",
        "effective_batch: 32",
        "steps_per_epoch: 8",
        "total_steps: 24",
        "warmup_steps: 0",
    ):
        assert key in proc.stdout, key
    assert not (tiny_config.parent / "run").exists(), "a dry run writes no run dir"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.learnin_rate=1"], "did you mean 'train.learning_rate'"),
        (["train.num_train_epochs=-1"], "train.num_train_epochs"),
        (["data.train_file=missing.csv"], "missing.csv"),
        (["train.precision=fp16"], "fp16 needs a CUDA GPU"),
        (["task=clasification"], "did you mean 'classification'"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tiny_config: Path, overrides: list[str], expected: str
) -> None:
    proc = nluft("train", str(tiny_config), *overrides, "--dry-run")
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def final_metrics(run_dir: Path) -> dict:
    return {
        s: json.loads((run_dir / "results" / f"{s}.json").read_text())
        for s in ("validation", "test")
    }


def test_resume_mid_epoch_matches_an_uninterrupted_run(tiny_config: Path, tmp_path: Path) -> None:
    common = [
        "train.num_train_epochs=12",
        "train.per_device_train_batch_size=8",
        "train.save_steps=10",
        "train.eval_strategy=steps",
        "train.eval_steps=40",
        "train.logging_steps=1",
        "train.save_total_limit=3",
    ]
    nluft("train", str(tiny_config), *common, f"output_dir={tmp_path / 'full'}", check=True)
    # Interrupt a second run with SIGTERM (as Slurm preemption would) once it has checkpointed.
    run_dir = tmp_path / "cut"
    cmd = [
        sys.executable,
        "-m",
        "nluft",
        "train",
        str(tiny_config),
        *common,
        f"output_dir={run_dir}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while not list((run_dir / "checkpoints").glob("step-*")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 3, err[-2000:]
    state = json.loads(
        sorted((run_dir / "checkpoints").glob("step-*"))[-1]
        .joinpath("trainer_state.json")
        .read_text()
    )
    assert 0 < state["global_step"] < 360 and not state["finished"]
    nluft("train", str(tiny_config), *common, f"output_dir={run_dir}", "--resume", check=True)
    full, resumed = final_metrics(tmp_path / "full"), final_metrics(run_dir)
    for split in full:
        assert resumed[split]["loss"] == pytest.approx(full[split]["loss"], abs=1e-6)
        assert resumed[split]["accuracy"] == full[split]["accuracy"]
    steps = [
        json.loads(x)["step"]
        for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert sorted(set(steps)) == list(range(1, 361)), "no optimizer step lost after resume"


def train_records(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_early_stopping_keeps_the_best_checkpoint(tiny_config: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "early"
    proc = nluft(
        "train",
        str(tiny_config),
        f"output_dir={run_dir}",
        "train.max_steps=40",
        "train.eval_strategy=steps",
        "train.eval_steps=3",
        "train.early_stopping_patience=2",
        "train.early_stopping_threshold=10",
        "train.save_total_limit=1",
        check=True,
    )
    assert "early stopping" in proc.stderr
    evals = [r["step"] for r in train_records(run_dir, "eval/validation")]
    assert evals == [3, 6, 9], "stopped after two evaluations without gain"
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert kept == ["step-00000003", "step-00000009"], "the best (first) and the last one"
    assert "loaded best checkpoint (step 3)" in proc.stderr


def test_bf16_autocast_trains_on_cpu(tiny_config: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "bf16"
    nluft("train", str(tiny_config), f"output_dir={run_dir}", "train.precision=bf16", check=True)
    assert json.loads((run_dir / "results" / "test.json").read_text())["accuracy"] >= 0.9
    speed = json.loads((run_dir / "results" / "train.json").read_text())
    assert speed["examples_per_s"] > 0 and 0 < speed["padding_efficiency"] <= 1


def test_gradient_accumulation_matches_a_larger_batch(
    tiny_config: Path, tiny_model_no_dropout: Path, tmp_path: Path
) -> None:
    common = [
        f"model.name_or_path={tiny_model_no_dropout}",
        "train.max_steps=8",
        "train.logging_steps=1",
        "train.eval_strategy=no",
        "data.group_by_length=false",
    ]
    nluft(
        "train",
        str(tiny_config),
        *common,
        f"output_dir={tmp_path / 'big'}",
        "train.per_device_train_batch_size=16",
        check=True,
    )
    nluft(
        "train",
        str(tiny_config),
        *common,
        f"output_dir={tmp_path / 'accum'}",
        "train.per_device_train_batch_size=8",
        "train.gradient_accumulation_steps=2",
        check=True,
    )
    big = [r["loss"] for r in train_records(tmp_path / "big")]
    accum = [r["loss"] for r in train_records(tmp_path / "accum")]
    assert len(big) == len(accum) == 8
    assert accum == pytest.approx(big, rel=1e-4, abs=1e-6)
