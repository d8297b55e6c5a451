"""FSDP2 meta-device initialisation: shard first, then read only this rank's rows of each weight.

The model arrives from `build_model(lazy=True)`: pre-trained tensors are placeholders
(models/lazy.py), everything newly made (task head, LoRA adapters, grown embeddings, buffers) is
real and small. As in torchtitan and accelerate's `fsdp2_load_full_state_dict`, the whole model
moves to the meta device, `fully_shard` splits it there, and `to_empty` allocates only this rank's
shard of each parameter. Each shard is then filled: pre-trained rows straight from the
safetensors files, the rest from the real tensors kept aside. A rank's peak memory while loading
is its shard plus the newly made tensors plus one tensor's rows in flight, never the whole model;
no rank broadcasts, because every rank made the same new tensors from the same seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor, Shard

from nluft.models.lazy import DeferredWeights


def shard_deferred(
    model: torch.nn.Module,
    weights: DeferredWeights,
    shard: Callable[[torch.nn.Module], None],
    device: torch.device,
) -> None:
    """Apply `shard` (fully_shard per layer and at the root) on the meta device, then fill."""
    pending = weights.pending(model)
    named = [*model.named_parameters(), *model.named_buffers()]
    # detach(): a view on the real storage that survives the parameter moving to meta.
    kept = {name: tensor.detach() for name, tensor in named if name not in pending}
    model.to(torch.device("meta"))
    shard(model)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            fill(param, name, kept, pending, weights)
        for name, buffer in model.named_buffers():
            fill(buffer, name, kept, pending, weights)


def fill(
    tensor: torch.Tensor,
    name: str,
    kept: dict[str, torch.Tensor],
    pending: dict[str, str],
    weights: DeferredWeights,
) -> None:
    """Copy this rank's rows of `name` (a real tensor kept aside, or checkpoint rows)."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    start, stop = local_rows(tensor, local)
    if name in kept:
        source = kept[name] if start is None else kept[name][start:stop]
    else:
        source = weights.read(pending[name], start, stop)
    local.copy_(source.to(local.dtype))


def local_rows(tensor: torch.Tensor, local: torch.Tensor) -> tuple[int | None, int | None]:
    """The global rows this rank holds of a dim-0 sharded DTensor (None, None: all of it).

    FSDP2 shards like `torch.chunk`: ceil(rows / world) rows per rank, the last ranks fewer or none.
    """
    if not isinstance(tensor, DTensor):
        return None, None
    assert tuple(tensor.placements) == (Shard(0),), f"FSDP2 shards dim 0, got {tensor.placements}"
    mesh = tensor.device_mesh
    rows, world, rank = tensor.shape[0], mesh.size(), mesh.get_local_rank()
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    stop = start + local.shape[0]
    assert stop == min(rows, start + chunk), (tensor.shape, local.shape, rank, world)
    return start, stop
