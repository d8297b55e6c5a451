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


def slow_eval_args(tiny_config: Path, tmp_path: Path, *extra: str) -> list[str]:
    """Config and overrides: 6 ms-long steps, an evaluation every 3 that takes ~100x longer."""
    validation = write_csv(tmp_path / "big_validation.csv", sentiment_rows(300, seed=5))
    return [
        str(tiny_config),
        f"data.validation_file={validation}",
        "train.max_steps=6",
        "train.eval_strategy=steps",
        f"train.eval_steps={EVAL_STEP}",
        "train.logging_steps=1",
        "train.per_device_eval_batch_size=2",
        *extra,
    ]


def test_stop_during_evaluation_resumes_with_that_evaluation(
    tiny_config: Path, tmp_path: Path
) -> None:
    common = slow_eval_args(tiny_config, tmp_path)
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


def test_only_rank_0_of_a_requeueable_slurm_job_requeues_and_only_while_allowed() -> None:
    from nluft.distributed import DistEnv
    from nluft.preemption import will_requeue

    job = DistEnv(slurm_job_id="7", slurm_requeue=True, slurm_max_requeues=3)
    assert will_requeue(job)
    assert not will_requeue(DistEnv(slurm_job_id="7", slurm_max_requeues=3)), "not nluft submit"
    assert not will_requeue(DistEnv(slurm_requeue=True, slurm_max_requeues=3)), "not in Slurm"
    assert not will_requeue(DistEnv(**{**job.__dict__, "rank": 1}))
    assert not will_requeue(DistEnv(**{**job.__dict__, "slurm_restart_count": 3}))


def test_at_the_requeue_limit_rank_0_says_so_and_calls_no_scontrol(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nluft.distributed import DistEnv
    from nluft.preemption import requeue_after_stop

    monkeypatch.setenv("PATH", "/nonexistent")  # a call to scontrol would report a failure
    env = DistEnv(slurm_job_id="7", slurm_requeue=True, slurm_max_requeues=2, slurm_restart_count=2)
    requeue_after_stop(env)
    err = capsys.readouterr().err
    assert "not requeueing job 7: it was requeued 2 times already (--max-requeues 2)" in err
    assert "scontrol" not in err


def test_dist_env_reads_what_the_job_script_exports() -> None:
    from nluft.distributed.env import read_dist_env

    env = read_dist_env({"NLUFT_REQUEUE": "1", "NLUFT_MAX_REQUEUES": "5", "SLURM_JOB_ID": "9"})
    assert (env.slurm_requeue, env.slurm_max_requeues, env.slurm_job_id) == (True, 5, "9")
    assert not read_dist_env({}).slurm_requeue


def test_a_stop_on_one_rank_stops_both_ranks_at_the_same_evaluation_batch(
    tiny_config: Path, tmp_path: Path
) -> None:
    """Only rank 1 gets the signal; rank 0 learns of it through the agreement and stops too."""
    import psutil

    common = slow_eval_args(
        tiny_config, tmp_path, "strategy.name=ddp", "train.per_device_train_batch_size=8"
    )
    run_dir = tmp_path / "cut"
    launch = [str(Path(sys.executable).with_name("nluft")), "launch", "--nproc-per-node", "2"]
    proc = subprocess.Popen(
        [*launch, *common, f"output_dir={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(proc, run_dir, EVAL_STEP)
    [rank1] = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if p.environ().get("RANK") == "1"
    ]
    rank1.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 3, err[-2000:]  # both ranks exited 3: stopped, checkpointed
    assert f"step {EVAL_STEP}: evaluation stopped after " in err, "rank 0 abandoned it too"
    [ckpt] = (run_dir / "checkpoints").glob("step-*")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["global_step"], state["pending_eval"]) == (EVAL_STEP, True)
    resumed = subprocess.run(
        [*launch, *common, f"output_dir={run_dir}", "--resume"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["step"] for r in records(run_dir, "eval/validation")] == [EVAL_STEP, 2 * EVAL_STEP]
