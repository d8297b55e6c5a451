"""What a run says about itself: derived values for --dry-run, plan.json and the tracker, and
the start-up lines on memory and windowed examples. Read by `nluft.train`; no loop state here.
"""

from __future__ import annotations

import json
import math
from typing import Any

from nluft.config import Config, Plan, to_yaml
from nluft.data import TaskData, num_windowed
from nluft.distributed import Strategy
from nluft.tracking import Tracker


def derived(strategy: Strategy, data: TaskData) -> dict[str, Any]:
    return {
        "device": str(strategy.device),
        "precision": strategy.precision,
        "strategy": strategy.name,
        "num_examples": {split: len(ds) for split, ds in data.examples.items()},
        "num_features": {split: len(ds) for split, ds in data.features.items()},
        "tokenized_cache": str(data.cache_path),
        **strategy.describe(),
        "num_windowed": {split: num_windowed(ds) for split, ds in data.features.items()},
    }


def report_memory(strategy: Strategy, tracker: Tracker) -> list[dict[str, int]]:
    """Every rank's bytes of parameters, gradients and optimizer state; rank 0 prints and logs."""
    reports = strategy.all_gather_objects(strategy.memory_report())
    for rank, report in enumerate(reports):
        sizes = ", ".join(
            f"{k.removesuffix('_bytes')} {v / 2**20:.2f} MiB" for k, v in report.items()
        )
        tracker.info(f"rank {rank} model states: {sizes}")
    return reports


def report_windowed(tracker: Tracker, data: TaskData) -> None:
    """Say how many examples were longer than data.max_length and split into windows."""
    for split, features in data.features.items():
        count = num_windowed(features)
        if count:
            tracker.info(
                f"{split}: {count} of {len(data.examples[split])} examples are longer than "
                "data.max_length and were split into overlapping windows"
            )


def run_facts(strategy: Strategy, plan: Plan, data: TaskData) -> dict[str, Any]:
    """What the tracker records about a run besides its config: plan, backend, Slurm job."""
    env = strategy.env
    slurm = {k: v for k, v in env.__dict__.items() if k.startswith("slurm_")}
    return {**plan.__dict__, **derived(strategy, data), **slurm}


def describe_plan(cfg: Config, strategy: Strategy, plan: Plan, data: TaskData) -> dict[str, Any]:
    """What --dry-run prints: the resolved config and every derived value."""
    info = {**plan.__dict__, **derived(strategy, data)}
    if strategy.env.is_main:
        print("# resolved config")
        print(to_yaml(cfg))
        print("# derived")
        for key, value in info.items():
            shown = json.dumps(value, indent=2) if isinstance(value, dict) else value
            print(f"{key}: {shown}")
        print(f"warmup_ratio_effective: {plan.warmup_steps / max(1, plan.total_steps):.4f}")
        print(f"epochs_ceil: {math.ceil(plan.num_epochs)}")
    return info
