"""Memory planner: per-rank bytes of model states for each strategy, and an activation estimate.

Pure counting (no torch at import): the caller passes each parameter's shape, element size and
whether it trains. Model-state figures follow the same rules as the strategies' own
`memory_report` (logged as `memory_per_rank` in plan.json), so they agree exactly:

- ddp: every rank holds all parameters, gradients of trainable ones, AdamW's two fp32 moments.
- ZeRO-1/2/3 (DeepSpeed): ZeRO-1 shards the optimizer state (+ an fp32 master copy), ZeRO-2 also
  gradients, ZeRO-3 also parameters (each padded to a multiple of the world size). Offload moves
  optimizer state (and ZeRO-3 parameters) to host memory: 0 bytes on the device.
- fsdp: parameters, gradients and moments sharded along dim 0 (torch.chunk), rank 0's share.

Activations follow Korthikanti et al. (2022), per layer s*b*h*(34 + 5*a*s/h) bytes at 2 bytes per
value (doubled for fp32); with activation checkpointing a layer keeps only its input (2*s*b*h
bytes at 16 bits) plus one layer's full activations while it is recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ParamInfo:
    shape: tuple[int, ...]
    element_size: int
    trainable: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModelShape:
    """What the activation estimate needs: layers, width, heads, bytes per activation value."""

    num_layers: int
    hidden_size: int
    num_heads: int
    activation_bytes: int  # 4 in fp32, 2 under bf16/fp16


@dataclass(frozen=True)
class Setting:
    strategy: str  # ddp, zero1, zero2, zero3, fsdp
    offload: bool = False

    @property
    def label(self) -> str:
        return self.strategy + ("+offload" if self.offload else "")


SETTINGS = [
    Setting("ddp"),
    Setting("zero1"),
    Setting("zero1", True),
    Setting("zero2"),
    Setting("zero2", True),
    Setting("zero3"),
    Setting("zero3", True),
    Setting("fsdp"),
]


def model_state_bytes(
    params: list[ParamInfo], setting: Setting, world: int, sixteen_bit: bool = False
) -> dict[str, int]:
    """Rank 0's bytes of parameters, gradients and optimizer state on the device."""
    if setting.strategy == "fsdp":
        return fsdp_bytes(params, world)
    if setting.strategy == "ddp":
        return record(
            sum(p.numel * p.element_size for p in params),
            sum(p.numel * p.element_size for p in params if p.trainable),
            sum(p.numel for p in params if p.trainable) * 8,
        )
    return zero_bytes(params, int(setting.strategy[-1]), world, sixteen_bit, setting.offload)


def zero_bytes(
    params: list[ParamInfo], stage: int, world: int, sixteen_bit: bool, offload: bool
) -> dict[str, int]:
    """As DeepSpeedStrategy.memory_report: ZeRO-3 partitions are padded to the world size."""
    local = {id(p): math.ceil(p.numel / world) if stage == 3 else p.numel for p in params}
    weights = sum(local[id(p)] * p.element_size for p in params)
    grads = sum(
        local[id(p)] * p.element_size // (world if stage == 2 else 1) for p in params if p.trainable
    )
    trainable = sum(p.numel for p in params if p.trainable)
    per_value = 8 + (4 if stage >= 1 or sixteen_bit else 0)  # moments + fp32 master copy
    optimizer = (trainable // world if stage >= 1 else trainable) * per_value
    if offload:
        optimizer = 0
        weights = 0 if stage == 3 else weights
    return record(weights, grads, optimizer)


def fsdp_bytes(params: list[ParamInfo], world: int) -> dict[str, int]:
    """Rank 0's dim-0 chunk of every parameter (torch.chunk: ceil(rows / world) rows)."""
    weights = grads = trainable = 0
    for p in params:
        rows = p.shape[0] if p.shape else 1
        local = min(math.ceil(rows / world), rows) * (p.numel // max(rows, 1))
        weights += local * p.element_size
        if p.trainable:
            grads += local * p.element_size
            trainable += local
    return record(weights, grads, trainable * 8)


def record(params: int, grads: int, optimizer: int) -> dict[str, int]:
    return {
        "params_bytes": params,
        "grads_bytes": grads,
        "optimizer_bytes": optimizer,
        "total_bytes": params + grads + optimizer,
    }


def activation_bytes(shape: ModelShape, batch: int, lengths: list[int], checkpointing: bool) -> int:
    """Activations kept for backward by the largest micro-batch (longest sequences, padded)."""
    s, b, h, a = max(lengths), batch, shape.hidden_size, shape.num_heads
    scale = shape.activation_bytes / 2
    full_layer = s * b * h * (34 + 5 * a * s / h) * scale
    if not checkpointing:
        return int(shape.num_layers * full_layer)
    return int(shape.num_layers * 2 * s * b * h * scale + full_layer)


@dataclass(frozen=True)
class PlanRow:
    setting: Setting
    peft: bool
    checkpointing: bool
    states: dict[str, int]
    activations: int

    @property
    def total(self) -> int:
        return self.states["total_bytes"] + self.activations


def cheapest_fit(rows: list[PlanRow], budget_bytes: float) -> PlanRow | None:
    """The first row that fits, in order of cost: full fine-tuning before PEFT, no
    recomputation before checkpointing, less communication (ddp, ZeRO-1, 2, FSDP, 3) first,
    and offload last."""
    order = {"ddp": 0, "zero1": 1, "zero2": 2, "fsdp": 3, "zero3": 4}
    ranked = sorted(
        rows,
        key=lambda r: (r.peft, r.setting.offload, r.checkpointing, order[r.setting.strategy]),
    )
    return next((r for r in ranked if r.total <= budget_bytes), None)


def format_row(row: PlanRow) -> str:
    mib = 2**20
    s = row.states
    return (
        f"{row.setting.label:<14} peft={'yes' if row.peft else 'no ':<3} "
        f"ckpt={'yes' if row.checkpointing else 'no ':<3} "
        f"params {s['params_bytes'] / mib:9.1f}  grads {s['grads_bytes'] / mib:8.1f}  "
        f"optim {s['optimizer_bytes'] / mib:9.1f}  act {row.activations / mib:8.1f}  "
        f"total {row.total / mib:9.1f} MiB"
    )
