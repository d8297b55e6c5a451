"""The torch.distributed process group and the collectives every multi-process backend shares."""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

from nluft.distributed.base import Strategy

# Whether nluft created the default group: a program that made its own (a notebook, a harness
# running several jobs in one launch) keeps it after a strategy closes.
created_here = False


def init_process_group(
    device: torch.device, timeout_s: float, world_size: int | None = None
) -> None:
    """NCCL on GPUs, gloo on CPUs; torchrun's env:// rendezvous; a bounded timeout.

    `world_size=1` needs no rendezvous: a group of one on an in-memory store, so a distributed
    strategy also runs as plain `nluft train` (e.g. to resume a 2-rank run on one process).
    """
    global created_here
    if dist.is_initialized():
        return
    created_here = True
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if world_size == 1:
        store = dist.HashStore()
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        return
    dist.init_process_group(backend=backend, timeout=timeout)


class GroupCollectives(Strategy):
    """Strategy collectives over the default process group (mixed into ddp/fsdp/deepspeed)."""

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def all_gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, obj)
        return out

    def any_rank(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], device=self.collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def mean(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item()) / self.env.world_size

    def collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        global created_here
        if created_here and dist.is_initialized():
            dist.destroy_process_group()
            created_here = False


def ensure_process_group(device: torch.device, timeout_s: float, distributed: bool) -> None:
    """The launcher's env:// group (torchrun, deepspeed); else a group of one process."""
    launched = distributed or dist.is_torchelastic_launched()
    init_process_group(device, timeout_s, None if launched else 1)
