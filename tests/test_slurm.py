"""`nluft submit` against a real Slurm cluster on localhost (munge, slurmctld, two slurmd nodes)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, nluft
from wandb_files import clean_env, read_segments

pytestmark = pytest.mark.slurm
CLUSTER = ROOT / "slurm" / "local_cluster.sh"


@pytest.fixture(scope="module")
def cluster() -> None:
    start = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    assert start.returncode == 0, f"local Slurm cluster did not start:\n{start.stderr[-2000:]}"
    yield
    subprocess.run([str(CLUSTER), "stop"], capture_output=True, timeout=120)


def job_id(stdout: str) -> str:
    line = next(x for x in stdout.splitlines() if x.startswith("submitted job "))
    return line.split()[-1]


def wait_for(job: str, timeout: float = 420) -> dict[str, str]:
    """Poll until no task of the job is queued or running; return its final scontrol fields."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout
        if not queued.strip():
            break
        time.sleep(0.3)
    else:
        subprocess.run(["scancel", job], check=False)
        pytest.fail(f"Slurm job {job} still running after {timeout} s")
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
    first = shown.stdout.splitlines()[0] if shown.stdout else ""
    return dict(field.split("=", 1) for field in first.split() if "=" in field)


def train_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]


def results(run_dir: Path, split: str = "test") -> dict[str, float]:
    return json.loads((run_dir / "results" / f"{split}.json").read_text())


COMMON = [
    "train.max_steps=24",
    "train.eval_strategy=steps",
    "train.eval_steps=12",
    "train.logging_steps=1",
    "train.per_device_train_batch_size=8",
]


def test_two_node_job_matches_a_direct_torchrun_run(
    cluster: None, tiny_config: Path, tmp_path: Path
) -> None:
    args = [str(tiny_config), *COMMON, "strategy.name=ddp"]
    nluft(
        "launch",
        "--nproc-per-node",
        "2",
        *args,
        f"output_dir={tmp_path / 'direct'}",
        check=True,
        timeout=420,
    )
    submitted = nluft(
        "submit", *args, f"output_dir={tmp_path / 'slurm'}", "--nodes", "2", check=True
    )
    job = job_id(submitted.stdout)
    state = wait_for(job)
    log = next((tmp_path / "slurm" / "slurm").glob("slurm-*.out")).read_text()
    assert state.get("JobState") == "COMPLETED", log[-3000:]
    assert state.get("NumNodes") == "2"
    for split in ("validation", "test"):
        direct, slurm = results(tmp_path / "direct", split), results(tmp_path / "slurm", split)
        assert slurm["loss"] == pytest.approx(direct["loss"], abs=1e-6)
        assert slurm["accuracy"] == direct["accuracy"]


def test_preempted_job_checkpoints_requeues_and_resumes(
    cluster: None, tiny_config: Path, tmp_path: Path
) -> None:
    args = [
        str(tiny_config),
        "train.max_steps=400",
        "train.save_steps=25",
        "train.eval_strategy=no",
        "train.logging_steps=1",
        "train.per_device_train_batch_size=8",
    ]
    nluft("train", *args, f"output_dir={tmp_path / 'reference'}", check=True, timeout=420)
    run_dir = tmp_path / "preempted run"  # a space: the #SBATCH --output line is quoted
    home = tmp_path / "home"
    home.mkdir()
    # W&B offline, no API key anywhere: sbatch passes this environment on to the job.
    wandb = ["tracking.wandb.enabled=true", "tracking.wandb.mode=offline"]
    submitted = nluft(
        "submit", *args, *wandb, f"output_dir={run_dir}", check=True, env=clean_env(home)
    )
    job = job_id(submitted.stdout)
    deadline = time.time() + 300
    while not list((run_dir / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    state = wait_for(job)
    log = (run_dir / "slurm" / f"slurm-{job}.out").read_text()
    assert state.get("JobState") == "COMPLETED", log[-3000:]
    assert state.get("Restarts") == "1", "requeued exactly once"
    assert log.count("nluft: stop signal; checkpointing") == 1 and "resumed from" in log
    assert log.count(f"nluft: requeueing job {job} (1 of 3)") == 1, "requeued, once"
    assert "nluft: run finished" in log
    stopped_at = int(log.split("stopped at step ")[1].split()[0])
    assert 0 < stopped_at < 400
    # Quiet and truthful: the node says where the run stopped, once; nothing looks like a crash.
    node_line = f"nluft launch: node 0: run stopped at step {stopped_at} for a requeue"
    assert log.count(node_line) == 1, log[-3000:]
    assert log.index(node_line) < log.index(f"nluft: requeueing job {job}")
    for crash in ("Traceback", "SignalException", "exit code 1", "training failed", "Error"):
        assert crash not in log, f"{crash!r} in the log:\n{log[-3000:]}"
    assert train_steps(run_dir) == list(range(1, 401)), "no step lost or repeated"
    assert results(run_dir)["loss"] == pytest.approx(
        results(tmp_path / "reference")["loss"], abs=1e-6
    )
    check_one_wandb_run(run_dir, job, stopped_at)


def check_one_wandb_run(run_dir: Path, job: str, stopped_at: int) -> None:
    """Both job segments wrote one W&B run: one id, one unbroken step axis, the Slurm job."""
    first, second = read_segments(run_dir)
    saved = (run_dir / "wandb_run_id").read_text().strip()
    assert first.run.run_id == second.run.run_id == saved
    assert first.steps("train/loss") == list(range(1, stopped_at + 1))
    assert second.steps("train/loss") == list(range(stopped_at + 1, 401))
    assert first.steps("event/requeue") == [stopped_at]
    assert min(row["_step"] for row in second.history) > max(r["_step"] for r in first.history)
    for seg, restarts in ((first, 0), (second, 1)):
        steps = [row["_step"] for row in seg.history]
        assert steps == sorted(set(steps)), "no step repeated within a segment"
        facts = seg.config["run"]
        assert (facts["slurm_job_id"], facts["slurm_restart_count"]) == (job, restarts)
    assert second.summary["global_step"] == 400


def test_array_sweep_gives_one_run_per_point_and_a_ranking(
    cluster: None, tiny_config: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    out = nluft(
        "submit",
        str(tiny_config),
        *COMMON,
        f"output_dir={sweep}",
        "--sweep",
        "train.learning_rate=1e-4,3e-3,1e-2",
        check=True,
    )
    job = job_id(out.stdout)
    wait_for(job)
    assert sorted(p.name for p in sweep.iterdir() if p.name != "slurm") == ["0", "1", "2"]
    lrs = [
        yaml.safe_load((sweep / i / "config.yaml").read_text())["train"]["learning_rate"]
        for i in "012"
    ]
    assert lrs == [1e-4, 3e-3, 1e-2]
    summary = nluft("sweep-summary", str(sweep), check=True).stdout
    ranked = [line for line in summary.splitlines() if line.strip()[:1].isdigit()]
    assert len(ranked) == 3, summary
    values = [float(line.split()[2]) for line in ranked]
    assert values == sorted(values, reverse=True), "ranked best first"
    assert "train.learning_rate=" in ranked[0]


def test_impossible_layout_is_rejected_before_sbatch(
    cluster: None, tiny_config: Path, tmp_path: Path
) -> None:
    before = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    proc = nluft("submit", str(tiny_config), f"output_dir={tmp_path / 'x'}", "--nodes", "2")
    assert proc.returncode == 2 and "strategy.name: 'single'" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x").exists(), "nothing written"
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == before
