"""Distributed backends behind one `Strategy` interface; `build_strategy` picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nluft.config import Config
from nluft.distributed.base import Strategy
from nluft.distributed.env import DistEnv, read_dist_env


def build_strategy(cfg: Config, env: DistEnv) -> Strategy:
    """The backend named by `strategy.name`; each lives in its own module, imported on demand."""
    name = cfg.strategy.name
    if name == "single":
        from nluft.distributed.single import SingleStrategy

        return SingleStrategy(cfg, env)
    if name == "ddp":
        from nluft.distributed.ddp import DDPStrategy

        return DDPStrategy(cfg, env)
    if name == "deepspeed":
        from nluft.distributed.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy(cfg, env)
    if name == "fsdp":
        from nluft.distributed.fsdp import FSDPStrategy

        return FSDPStrategy(cfg, env)
    raise AssertionError(f"strategy {name!r} passed config validation but has no backend")


def read_checkpoint_weights(
    cfg: Config, checkpoint: Path, template: dict[str, Any]
) -> dict[str, Any]:
    """Full model weights of a checkpoint any strategy wrote, read by one plain process.

    `template` is the unwrapped model's state dict (or the part a PEFT checkpoint holds): the
    tensors sharded formats fill.
    """
    name = cfg.strategy.name
    if name in ("single", "ddp"):
        from nluft.distributed.replicated import read_weights

        return read_weights(checkpoint)
    if name == "fsdp":
        from nluft.distributed import fsdp

        return fsdp.read_weights(checkpoint, template)
    from nluft.distributed import deepspeed

    return deepspeed.read_weights(checkpoint, cfg.train.precision)


__all__ = [
    "DistEnv",
    "Strategy",
    "build_strategy",
    "read_checkpoint_weights",
    "read_dist_env",
]
