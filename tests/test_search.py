"""Hyperparameter search: real Optuna studies on a journal file, real trials, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, nluft
from test_slurm import cluster, job_id, wait_for  # noqa: F401  (cluster: a fixture)

from launch.slurm import SubmitOptions, render_search_script
from nluft.config import Config
from nluft.errors import NluftError
from nluft.search.results import load_study, search_summary
from nluft.search.runner import load_search, run_search

GOLDEN = Path(__file__).parent / "golden"
TINY_TRAIN = {
    "max_steps": 2,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "logging_steps": 1,
    "per_device_train_batch_size": 16,
}


def search_config(tiny_config: Path, tmp_path: Path, search: dict[str, Any], **train: Any) -> Path:
    """The tiny classification config with a `search:` section and a few training steps."""
    cfg = yaml.safe_load(tiny_config.read_text())
    cfg["output_dir"] = str(tmp_path / "search")
    cfg["train"].update({**TINY_TRAIN, **train})
    cfg["search"] = search
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def trials(output_dir: Path) -> list[Any]:
    return load_study(output_dir).get_trials(deepcopy=False)


def events(run_dir: Path) -> list[str]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["event"] for r in map(json.loads, lines) if r["kind"] == "event"]


GRID = {"train.learning_rate": {"choice": [1e-3, 3e-3]}, "train.warmup_steps": {"int": [0, 1]}}


@pytest.mark.parametrize(
    ("space", "extra", "message"),
    [
        ({"train.lernin_rate": {"choice": [1e-3]}}, {}, "no config key 'train.lernin_rate'"),
        ({"train": {"choice": [1]}}, {}, "search.space.train: is a section"),
        ({"train.learning_rate": {"choice": [2.0]}}, {}, "value 2.0 is not a valid config"),
        ({"train.learning_rate": {"loguniform": [0, 1e-3]}}, {}, "empty or not positive"),
        ({"train.learning_rate": {"uniform": [1e-4, 1e-3]}}, {}, "method grid needs a finite"),
        (GRID, {"n_trials": 5}, "exceeds the grid's 4 points"),
        (GRID, {"method": "tpe"}, "search.n_trials: required for method tpe"),
        ({"train.seed": {"int": [1, 2], "choice": [1]}}, {}, "exactly one of choice"),
    ],
)
def test_bad_spaces_are_one_line_errors(
    tiny_config: Path, tmp_path: Path, space: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    path = search_config(tiny_config, tmp_path, {"method": "grid", "space": space, **extra})
    with pytest.raises(NluftError, match=message) as err:
        load_search(str(path), [])
    assert "\n" not in str(err.value)


def test_cli_refuses_a_bad_space_with_exit_2(tiny_config: Path, tmp_path: Path) -> None:
    path = search_config(tiny_config, tmp_path, {"method": "grid", "space": GRID})
    proc = nluft("search", str(path), "search.n_trials=9", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"nluft: error: {path}: search.n_trials: 9 exceeds the grid's 4 points; lower it or "
        "leave it unset"
    ]
    assert not (tmp_path / "search").exists()


def test_two_workers_cover_a_grid_exactly_once(tiny_config: Path, tmp_path: Path) -> None:
    path = search_config(tiny_config, tmp_path, {"method": "grid", "space": GRID})
    proc = nluft("search", str(path), "--parallel", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "search"
    done = trials(out)
    assert [t.state.name for t in done] == ["COMPLETE"] * 4
    points = sorted((t.params["train.learning_rate"], t.params["train.warmup_steps"]) for t in done)
    assert points == [(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)]
    assert len({t.user_attrs["run_dir"] for t in done}) == 4
    for trial in done:  # each trial is a normal run with its own config, metrics and export
        run_dir = out / trial.user_attrs["run_dir"]
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["train"]["learning_rate"] == trial.params["train.learning_rate"]
        assert saved["search"] is None
        assert (run_dir / "export" / "config.json").is_file()
    summary = search_summary(out)
    assert "trials: 4 complete" in summary
    again = nluft("search", str(path), timeout=120)  # a finished study: nothing runs again
    assert again.returncode == 0 and "starting" not in again.stdout
    assert len(trials(out)) == 4


def test_seeded_random_search_is_reproducible(tiny_config: Path, tmp_path: Path) -> None:
    space = {"train.learning_rate": {"loguniform": [1e-4, 1e-2]}, "train.seed": {"int": [1, 100]}}
    drawn = []
    for name in ("a", "b", "c"):
        seed = 7 if name != "c" else 8
        search = {"method": "random", "n_trials": 2, "seed": seed, "space": space}
        path = search_config(tiny_config, tmp_path / name, search, max_steps=1, eval_steps=1)
        assert run_search(str(path), [], 1, False) == 0
        drawn.append([t.params for t in trials(tmp_path / name / "search")])
    assert drawn[0] == drawn[1]
    assert drawn[0] != drawn[2]
    assert drawn[0][0] != drawn[0][1]


def test_median_pruner_stops_a_clearly_worse_trial(tiny_config: Path, tmp_path: Path) -> None:
    search = {
        "method": "grid",
        "seed": 1,  # grid order: the sensible learning rate first, the absurd one second
        "metric": "loss",
        "pruner": "median",
        "pruner_startup_trials": 1,
        "space": {"train.learning_rate": {"choice": [3e-3, 0.9]}},
    }
    path = search_config(tiny_config, tmp_path, search, max_steps=8, eval_steps=2)
    assert run_search(str(path), [], 1, False) == 0
    first, second = trials(tmp_path / "search")
    assert first.params["train.learning_rate"] == 3e-3, "grid order changed; pick another seed"
    assert (first.state.name, second.state.name) == ("COMPLETE", "PRUNED")
    pruned_dir = tmp_path / "search" / second.user_attrs["run_dir"]
    assert "pruned" in events(pruned_dir)
    steps = json.loads((pruned_dir / "results" / "train.json").read_text())["steps"]
    assert steps < 8
    summary = search_summary(tmp_path / "search")
    assert "1 complete, 1 pruned" in summary
    assert f"steps saved by pruning: {8 - steps}" in summary


def test_killed_worker_does_not_lose_the_study(tiny_config: Path, tmp_path: Path) -> None:
    """SIGKILL mid-trial: the rerun retries the lost trial from its checkpoint, then finishes."""
    search = {"method": "random", "n_trials": 2, "seed": 3, "space": GRID}
    path = search_config(tiny_config, tmp_path, search, max_steps=12, eval_steps=12, save_steps=4)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "nluft", "search", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = tmp_path / "search" / "trial-000" / "checkpoints"
    deadline = time.time() + 180
    while not any(checkpoints.glob("step-*")) and time.time() < deadline:
        assert worker.poll() is None, "the worker ended before its first checkpoint"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert [t.state.name for t in trials(tmp_path / "search")] == ["RUNNING"]
    proc = nluft("search", str(path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trial 0 lost its worker" in proc.stdout
    states = [t.state.name for t in trials(tmp_path / "search")]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]  # the lost one, its retry, the second
    assert "resume" in events(tmp_path / "search" / "trial-000")
    assert "trials: 2 complete" in search_summary(tmp_path / "search")


def test_search_array_script_matches_golden_file() -> None:
    cfg = Config.model_validate(
        {
            "task": "classification",
            "output_dir": "/scratch/runs/sst2-search",
            "model": {"name_or_path": "roberta-base"},
            "data": {"dataset_name": "glue"},
            "search": {"method": "tpe", "n_trials": 20, "space": GRID},
        }
    )
    opts = SubmitOptions(partition="cpu", time="02:00:00", max_requeues=5)
    script = render_search_script(
        "configs/sst2.yaml", ["train.seed=1"], cfg, opts, 4, Path("/home/me/nluft")
    )
    golden = GOLDEN / "slurm_search.sbatch"
    if os.environ.get("NLUFT_UPDATE_GOLDEN"):
        golden.write_text(script)
    assert script == golden.read_text(), f"re-render with NLUFT_UPDATE_GOLDEN=1 and review {golden}"


@pytest.mark.slurm
@pytest.mark.usefixtures("cluster")
def test_slurm_array_shares_one_study_through_a_preemption(
    tiny_config: Path, tmp_path: Path
) -> None:
    """2 array tasks pull trials from one journal; task 0 is preempted, requeued, and resumes."""
    search = {"method": "random", "n_trials": 3, "seed": 5, "space": GRID}
    path = search_config(tiny_config, tmp_path, search, max_steps=16, eval_steps=16, save_steps=2)
    submitted = nluft("submit", str(path), "--search", "--workers", "2", check=True, timeout=120)
    job = job_id(submitted.stdout)
    out = tmp_path / "search"
    deadline = time.time() + 300
    while not list(out.glob("trial-*/checkpoints/step-*")) and time.time() < deadline:
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_0"], check=True, timeout=30)
    wait_for(job)
    logs = {i: (out / "slurm" / f"slurm-{job}_{i}.out").read_text() for i in (0, 1)}
    task0 = subprocess.run(
        ["scontrol", "-o", "show", "job", f"{job}_0"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "Restarts=1" in task0, logs[0][-3000:]
    assert "stop signal; checkpointing" in logs[0] and "nluft: requeueing job" in logs[0]
    done = trials(out)
    complete = [t for t in done if t.state.name == "COMPLETE"]
    assert len(complete) == 3, [t.state.name for t in done]
    assert len({t.user_attrs["run_dir"] for t in complete}) == 3, "no trial counted twice"
    resumed = [t for t in complete if "failed_trial" in t.system_attrs]
    assert len(resumed) == 1, "the preempted trial came back once"
    run_dir = out / resumed[0].user_attrs["run_dir"]
    assert "resume" in events(run_dir), "resumed from its checkpoint, not from scratch"
    assert json.loads((run_dir / "results" / "train.json").read_text())["steps"] == 16


@pytest.mark.distributed
def test_ddp_trials_talk_to_the_study_from_rank_0_only(tiny_config: Path, tmp_path: Path) -> None:
    """Under torchrun every rank trains each trial, but the study holds one trial per point."""
    search = {"method": "grid", "space": {"train.learning_rate": {"choice": [1e-3, 3e-3]}}}
    path = search_config(tiny_config, tmp_path, search)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "nluft", "search", str(path), "strategy.name=ddp"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = trials(tmp_path / "search")
    assert [t.state.name for t in done] == ["COMPLETE", "COMPLETE"]
    for trial in done:
        plan = json.loads(
            (tmp_path / "search" / trial.user_attrs["run_dir"] / "plan.json").read_text()
        )
        assert plan["world_size"] == 2
