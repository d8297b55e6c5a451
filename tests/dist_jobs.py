"""Per-rank harness: several nluft jobs in one process, so one torchrun launch serves many checks.

Each 2-process launch costs 10-20 s of imports on a CPU machine; running a list of jobs per launch
keeps tests/test_distributed.py short. Usage (every rank runs the same list, in order):

    python -m torch.distributed.run --nproc-per-node 2 ... tests/dist_jobs.py JOBS.json
    python tests/dist_jobs.py JOBS.json            # the same jobs on one process
    dist_jobs.run_jobs(JOBS)                       # ... or inside the caller (no start-up cost)

JOBS.json is a list of
    {"kind": "cli", "argv": ["train", "CONFIG", "key=value", ...]}    one `nluft` verb
    {"kind": "eval", "run_dir": D, "split": S, "strategy": "ddp",       metrics and predictions
     "overrides": [...], "out": "FILE.json", "export_dir": E}           of D/export (or E) on
                                                                        all ranks of the launch
    {"kind": "stop", "argv": ["train", ...], "rank": R, "when": P}       SIGTERM to rank R once
                                                                        file P exists; exit 3
    {"kind": "nan_step", "overrides": [...], "out": "FILE.json"}       a NaN loss on step 2 of 3
                                                                        (tests/nan_step_job.py)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


def run_cli(job: dict[str, Any]) -> None:
    from nluft.cli import main

    code = main(job["argv"])
    if code != 0:
        raise SystemExit(code)


def signal_when(path: Path) -> threading.Thread:
    """SIGTERM to this process once `path` exists (a run's plan.json, written just before its
    loop): it arrives within the run's first micro-batches."""

    def wait_then_signal() -> None:
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=wait_then_signal, daemon=True)
    thread.start()
    return thread


def run_stop(job: dict[str, Any]) -> None:
    """`nluft train` stopped by a SIGTERM to rank `job["rank"]` once `job["when"]` exists; every
    rank must end with the stop code 3 (the checkpoint written, the run resumable)."""
    from nluft.cli import main
    from nluft.distributed import read_dist_env

    thread = signal_when(Path(job["when"])) if read_dist_env().rank == job["rank"] else None
    code = main(job["argv"])
    if thread is not None:
        thread.join()
    if code != 3:
        raise SystemExit(f"stop job: exit code {code}, not the stop code 3")


def run_eval(job: dict[str, Any]) -> None:
    """Evaluate a run's export on every rank of this launch with the job's strategy."""
    from nluft.data import build_data, num_windowed
    from nluft.distributed import build_strategy, read_dist_env
    from nluft.evaluate import evaluate_split, load_run_config
    from nluft.models import load_exported
    from nluft.tasks import build_task

    run_dir = Path(job["run_dir"])
    overrides = [*job.get("overrides", []), f"strategy.name={job['strategy']}"]
    cfg = load_run_config(run_dir, overrides)
    env = read_dist_env()
    strategy = build_strategy(cfg, env)
    task = build_task(cfg)
    model, tokenizer = load_exported(Path(job.get("export_dir", run_dir / "export")), task)
    hf_config: Any = model.config
    task.label_names = [hf_config.id2label[i] for i in range(hf_config.num_labels)]
    strategy.setup_inference(model)
    data = build_data(cfg, task, tokenizer, env.is_main, strategy.barrier)
    split = job["split"]
    metrics, predictions = evaluate_split(
        strategy,
        task,
        data.examples[split],
        data.features[split],
        cfg.train.per_device_eval_batch_size,
        int(tokenizer.pad_token_id or 0),
    )
    if env.is_main:
        features = data.features[split]
        result = {
            "world_size": env.world_size,
            "num_examples": len(data.examples[split]),
            "num_features": len(features),
            "num_windowed": num_windowed(features),
            "metrics": metrics,
            "predictions": predictions,
            "references": task.references(data.examples[split]),
        }
        Path(job["out"]).write_text(json.dumps(result, default=str))
    strategy.close()


def run_nan_step(job: dict[str, Any]) -> None:
    from nan_step_job import run_nan_step

    run_nan_step(job)


KINDS = {"cli": run_cli, "eval": run_eval, "nan_step": run_nan_step, "stop": run_stop}


def run_jobs(jobs: list[dict[str, Any]]) -> None:
    """Run the jobs in order in this process (a test calls it directly for one process)."""
    from nluft.cli import quiet_libraries

    quiet_libraries()
    # Training installs SIGTERM/SIGUSR1 handlers; give the caller its own back.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        for job in jobs:
            KINDS[job["kind"]](job)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def main(jobs_file: str) -> None:
    import datetime

    import torch.distributed as dist

    from nluft.distributed import read_dist_env

    # One process group for all jobs, made here: strategies use it and leave it open on close
    # (also for one rank under torchrun: DeepSpeed keeps its groups from one job to the next).
    if read_dist_env().is_distributed or dist.is_torchelastic_launched():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    run_jobs(json.loads(Path(jobs_file).read_text()))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
