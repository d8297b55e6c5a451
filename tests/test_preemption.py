"""Stop requests (SIGTERM/SIGUSR1) during evaluation, and who requeues a stopped Slurm job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, nluft, sentiment_rows, write_csv

EVAL_STEP = 3


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def wait_for_step(proc: subprocess.Popen[str], run_dir: Path, step: int) -> None:
    """Return as soon as metrics.jsonl shows training step `step` (logged just before its eval)."""
    deadline = time.time() + 240
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if path.is_file() and any(
            line.endswith("}")
            and json.loads(line)["kind"] == "train"
            and json.loads(line)["step"] == step
            for line in path.read_text().splitlines()
        ):
            return
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"training never reached step {step}")


def test_stop_during_evaluation_resumes_with_that_evaluation(
    tiny_config: Path, tmp_path: Path
) -> None:
    # A validation set large enough that evaluating it takes seconds, next to ms-long steps.
    validation = write_csv(tmp_path / "big_validation.csv", sentiment_rows(300, seed=5))
    common = [
        str(tiny_config),
        f"data.validation_file={validation}",
        "train.max_steps=6",
        "train.eval_strategy=steps",
        f"train.eval_steps={EVAL_STEP}",
        "train.logging_steps=1",
        "train.per_device_eval_batch_size=2",
    ]
    full = tmp_path / "full"
    nluft("train", *common, f"output_dir={full}", check=True, timeout=300)
    run_dir = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nluft", "train", *common, f"output_dir={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(proc, run_dir, EVAL_STEP)
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    took = time.time() - signalled
    assert proc.returncode == 3, err[-2000:]
    done, total = (int(x) for x in err.split("evaluation stopped after ")[1].split()[:3:2])
    assert done < total, "the evaluation was abandoned, not finished"
    [ckpt] = (run_dir / "checkpoints").glob("step-*")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["global_step"], state["pending_eval"]) == (EVAL_STEP, True)
    assert records(run_dir, "eval/validation") == [], "nothing logged for the cut evaluation"
    full_eval = (
        records(full, "eval/validation")[0]["time"] - records(full, "train")[EVAL_STEP - 1]["time"]
    )
    print(f"stop took {took:.1f} s; a full evaluation {full_eval:.1f} s ({done}/{total} batches)")

    nluft("train", *common, f"output_dir={run_dir}", "--resume", check=True, timeout=300)
    drop = ("time",)
    evals = [
        {k: v for k, v in r.items() if k not in drop} for r in records(run_dir, "eval/validation")
    ]
    expected = [
        {k: v for k, v in r.items() if k not in drop} for r in records(full, "eval/validation")
    ]
    assert evals == expected, "the cut evaluation ran on resume, and the later one matches"
    for split in ("validation", "test"):
        got = json.loads((run_dir / "results" / f"{split}.json").read_text())
        want = json.loads((full / "results" / f"{split}.json").read_text())
        assert got == pytest.approx(want, abs=1e-6)
