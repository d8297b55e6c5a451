"""A dist_jobs job: three optimizer steps of a strategy on a tiny model, the second with a NaN loss.

    {"kind": "nan_step", "overrides": ["strategy.name=deepspeed", ...], "out": "FILE.json"}

Every rank runs it (a 2-rank launch gives each rank other rows); rank 0 writes, per step, what
`Strategy.step()` reported, the learning rate after it, and whether the gathered weights changed
and are finite. The NaN enters through the loss, as a bad batch or a diverging model would make it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


class Tiny(torch.nn.Module):
    """Token ids in (no dtype of the engine to match), one number per row out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.dense = torch.nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dense(self.embed(ids)).float().square().mean()


def nan_step_config(overrides: list[str]) -> Any:
    from nluft.config import Config, apply_override

    base = {
        "task": "classification",
        "output_dir": "unused",
        "model": {"name_or_path": "unused"},
        "data": {"train_file": "unused"},
        "train": {
            "learning_rate": 1e-2,
            "max_steps": 10,
            "warmup_steps": 0,
            "per_device_train_batch_size": 2,
        },
    }
    for item in overrides:
        apply_override(base, item)
    return Config.model_validate(base)


def weights(strategy: Any) -> dict[str, torch.Tensor]:
    """Full fp32 weights on rank 0 (a collective under ZeRO-3: every rank calls it)."""
    return {k: v.float().clone() for k, v in (strategy.export_state_dict() or {}).items()}


def run_nan_step(job: dict[str, Any]) -> None:
    from nluft.config import build_plan
    from nluft.distributed import build_strategy, read_dist_env

    cfg = nan_step_config(job["overrides"])
    env = read_dist_env()
    strategy = build_strategy(cfg, env)
    torch.manual_seed(0)
    with strategy.model_init_context():
        model = Tiny()
    strategy.setup(model, build_plan(cfg, env.world_size, 1000))
    steps = []
    for step in (1, 2, 3):
        ids = torch.arange(4).reshape(2, 2) + 3 * env.rank + step
        before = weights(strategy)
        loss = strategy.model(ids.to(strategy.device))  # type: ignore[misc]
        strategy.backward(loss * (float("nan") if step == 2 else 1.0))
        result = strategy.step()
        after = weights(strategy)
        steps.append(
            {
                "skipped": result.skipped,
                "fault": result.fault,
                "lr": strategy.learning_rate,
                "changed": any(not torch.equal(before[k], after[k]) for k in before),
                "finite": all(bool(torch.isfinite(t).all()) for t in after.values()),
            }
        )
    if env.is_main:
        Path(job["out"]).write_text(json.dumps(steps))
