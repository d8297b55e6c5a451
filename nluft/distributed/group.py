"""The torch.distributed process group and the collectives every multi-process backend shares."""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

from nluft.distributed.base import Strategy


def init_process_group(device: torch.device, timeout_s: float) -> None:
    """NCCL on GPUs, gloo on CPUs; torchrun's env:// rendezvous; a bounded timeout."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


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
        if dist.is_initialized():
            dist.destroy_process_group()


def ensure_process_group(device: torch.device, timeout_s: float, distributed: bool) -> None:
    """The launcher's env:// group (torchrun, deepspeed); else one process on a HashStore."""
    if dist.is_initialized():
        return
    if distributed or dist.is_torchelastic_launched():
        init_process_group(device, timeout_s)
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
