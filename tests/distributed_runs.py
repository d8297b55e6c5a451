"""Helpers for the 2-process torchrun tests of the deepspeed and fsdp strategies.

Runs are real: `python -m torch.distributed.run --nproc_per_node N -m nluft train ...` on gloo,
on a tiny random BERT without dropout (so 1-rank and 2-rank runs draw no different random masks).
Shared results (the model, the single-process reference run) are cached under pytest's base temp
directory so that both test files reuse them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, nluft

TIMEOUT_S = 240
# Parity: 6 optimizer steps of 16 examples (2 accumulated micro-batches of 8 per step).
STEPS = 6
COMMON = [
    f"train.max_steps={STEPS}",
    "train.gradient_accumulation_steps=2",
    "train.logging_steps=1",
    "train.eval_strategy=steps",
    "train.eval_steps=3",
    "train.save_steps=3",
    "train.save_total_limit=2",
    "train.load_best_model_at_end=false",
]
SINGLE_BATCH = ["train.per_device_train_batch_size=8"]
# LoRA (peft) runs: no adapter dropout (ranks would draw different masks), a step that moves them.
LORA = ["peft.r=4", "peft.alpha=8", "peft.dropout=0", "train.learning_rate=3e-2"]
TWO_RANK_BATCH = ["train.per_device_train_batch_size=4"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun_command(nproc: int, *target: str) -> tuple[list[str], dict[str, str]]:
    """torchrun's own runner with a c10d rendezvous on a free port, and its environment."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=localhost:{free_port()}",
        *target,
    ]
    return cmd, env


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`nluft` under torchrun."""
    cmd, env = torchrun_command(nproc, "-m", "nluft", *args)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise AssertionError(
            f"torchrun {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    return proc


def launch(nproc: int, jobs: list[dict[str, Any]], path: Path) -> None:
    """One torchrun launch of tests/dist_jobs.py running `jobs` in order on every rank."""
    path.write_text(json.dumps(jobs))
    cmd, env = torchrun_command(nproc, str(ROOT / "tests" / "dist_jobs.py"), str(path))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def cached_dir(factory: pytest.TempPathFactory, name: str) -> tuple[Path, bool]:
    """A directory under the session's base temp dir; True when a previous test already made it."""
    path = factory.getbasetemp() / name
    return path, (path / ".done").exists()


def no_dropout_model(factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny BERT's weights with dropout switched off in its config."""
    out, done = cached_dir(factory, "tiny-bert-no-dropout")
    if done:
        return out
    out.mkdir(exist_ok=True)
    for item in tiny_model_dir.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config))
    (out / ".done").touch()
    return out


def write_config(path: Path, model_dir: Path, files: dict[str, Path], cache: Path) -> Path:
    cfg: dict[str, Any] = {
        "task": "classification",
        "output_dir": str(path.parent / "unused"),
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "train_file": str(files["train"]),
            "validation_file": str(files["validation"]),
            "test_file": str(files["test"]),
            "max_length": 32,
            "cache_dir": str(cache),
        },
        "train": {"learning_rate": 3e-3, "seed": 7},
        "tracking": {"progress_bar": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def reference_run(factory: pytest.TempPathFactory, config: Path) -> Path:
    """The single-process fp32 run every 2-rank strategy must match (made once per session)."""
    run_dir, done = cached_dir(factory, "reference-run")
    if not done:
        nluft("train", str(config), *COMMON, *SINGLE_BATCH, f"output_dir={run_dir}", check=True)
        (run_dir / ".done").touch()
    return run_dir


def train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in records(run_dir) if r["kind"] == "train"]


def records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def final_metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    return {
        s: json.loads((run_dir / "results" / f"{s}.json").read_text())
        for s in ("validation", "test")
    }


def memory(run_dir: Path) -> list[dict[str, int]]:
    return json.loads((run_dir / "plan.json").read_text())["memory_per_rank"]  # type: ignore[no-any-return]


def lora_reference(factory: pytest.TempPathFactory, config: Path) -> Path:
    """The single-process fp32 LoRA run every strategy must match (made once per session)."""
    from dist_jobs import run_jobs

    run_dir, done = cached_dir(factory, "lora-reference-run")
    if not done:
        argv = ["train", str(config), *COMMON, *SINGLE_BATCH, *LORA, f"output_dir={run_dir}"]
        run_jobs([{"kind": "cli", "argv": argv}])
        (run_dir / ".done").touch()
    return run_dir
