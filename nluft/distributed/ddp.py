"""DistributedDataParallel: a full model copy per rank, gradients averaged by all-reduce.

gloo on CPUs, NCCL on GPUs. The step math is `single`'s (see replicated.py); DDP only adds the
gradient all-reduce, so 2 ranks x batch 8 train like 1 process x batch 16.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from nluft.config import Config
from nluft.distributed.env import DistEnv
from nluft.distributed.group import GroupCollectives, init_process_group
from nluft.distributed.replicated import ReplicatedStrategy


class DDPStrategy(GroupCollectives, ReplicatedStrategy):
    """`strategy.name: ddp`; also runs as one process (e.g. to resume a 2-rank run on 1)."""

    name = "ddp"

    def __init__(self, cfg: Config, env: DistEnv) -> None:
        super().__init__(cfg, env)
        init_process_group(self.device, cfg.strategy.timeout_s, env.world_size)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        ddp = DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.cfg.strategy.find_unused_parameters,
            **no_buffer_sync_in_forward(),
        )
        # Same weights on every rank (DDP broadcast them from rank 0); distinct dropout masks.
        torch.manual_seed(self.cfg.train.seed + self.env.rank)
        return ddp

    def unwrapped(self) -> torch.nn.Module:
        assert self.model is not None, "setup() first"
        if isinstance(self.model, DistributedDataParallel):
            return self.model.module
        return self.model

    def no_sync(self) -> contextlib.AbstractContextManager[Any]:
        if isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def save(self, path: Path) -> None:
        # Every rank holds identical weights and optimizer state: rank 0 writes the one copy.
        if self.env.is_main:
            super().save(path)

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        return super().export_state_dict() if self.env.is_main else None


def no_buffer_sync_in_forward() -> dict[str, Any]:
    """DDP's flag for not broadcasting buffers in every forward (renamed in newer torch).

    Encoder buffers (position ids) never change, and a broadcast inside forward would hang
    evaluation, where ranks run different numbers of batches.
    """
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {key: False}
