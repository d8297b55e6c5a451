"""Derived settings: world size, effective batch, steps, warmup (pure functions of the config)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nluft.config.schema import Config


@dataclass(frozen=True)
class Plan:
    """Everything derived from the config and the data size; printed by --dry-run, saved."""

    world_size: int
    num_train_examples: int
    per_device_batch: int
    effective_batch: int
    steps_per_epoch: int
    total_steps: int
    num_epochs: float
    warmup_steps: int


def build_plan(cfg: Config, world_size: int, num_train_examples: int) -> Plan:
    """Optimizer steps, epochs and warmup from batch sizes, accumulation and data size."""
    train = cfg.train
    micro_batch = train.per_device_train_batch_size * world_size
    batches_per_epoch = max(1, math.ceil(num_train_examples / micro_batch))
    # An epoch's last, partial accumulation group still steps (as the Hugging Face Trainer).
    steps_per_epoch = math.ceil(batches_per_epoch / train.gradient_accumulation_steps)
    if train.max_steps > 0:
        total_steps = train.max_steps
    else:
        total_steps = max(1, math.ceil(train.num_train_epochs * steps_per_epoch))
    warmup = train.warmup_steps or math.ceil(train.warmup_ratio * total_steps)
    return Plan(
        world_size=world_size,
        num_train_examples=num_train_examples,
        per_device_batch=train.per_device_train_batch_size,
        effective_batch=micro_batch * train.gradient_accumulation_steps,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        num_epochs=round(total_steps / steps_per_epoch, 4),
        warmup_steps=min(warmup, total_steps),
    )
