"""`nluft plan`: the config's model (shapes only, on the meta device) and data through plan.py."""

from __future__ import annotations

from typing import Any

import torch

from nluft.config import Config
from nluft.data import build_data
from nluft.models import build_model, build_tokenizer
from nluft.plan import (
    SETTINGS,
    ModelShape,
    ParamInfo,
    PlanRow,
    Setting,
    activation_bytes,
    cheapest_fit,
    format_row,
    model_state_bytes,
)
from nluft.tasks import build_task


def param_infos(model: torch.nn.Module) -> list[ParamInfo]:
    return [
        ParamInfo(tuple(p.shape), p.element_size(), p.requires_grad) for p in model.parameters()
    ]


def model_shape(model: Any, precision: str) -> ModelShape:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(
        num_layers=int(getattr(text, "num_hidden_layers", 1)),
        hidden_size=int(getattr(text, "hidden_size", 1)),
        num_heads=int(getattr(text, "num_attention_heads", 1)),
        activation_bytes=4 if precision == "fp32" else 2,
    )


def plan_rows(cfg: Config, world: int) -> list[PlanRow]:
    """Every strategy x (full, PEFT) x (with/without activation checkpointing)."""
    task = build_task(cfg)
    tokenizer = build_tokenizer(cfg.model, task)
    data = build_data(cfg, task, tokenizer, True, lambda: None)
    lengths = list(data.features["train"]["length"])
    peft_options = [False, True] if cfg.peft is not None else [False]
    rows = []
    for peft in peft_options:
        model = build_model(cfg.model, task, tokenizer, cfg.peft if peft else None, meta=True)
        params, shape = param_infos(model), model_shape(model, cfg.train.precision)
        batch = cfg.train.per_device_train_batch_size
        for setting in SETTINGS:
            states = model_state_bytes(params, setting, world, cfg.train.precision != "fp32")
            for checkpointing in (False, True):
                activations = activation_bytes(shape, batch, lengths, checkpointing)
                rows.append(PlanRow(setting, peft, checkpointing, states, activations))
    return rows


def configured_setting(cfg: Config) -> Setting:
    """The plan's name for the config's own strategy."""
    strategy = cfg.strategy
    if strategy.name == "deepspeed":
        stage = 2 if strategy.zero_stage is None else strategy.zero_stage
        offload = bool(strategy.offload_optimizer or strategy.offload_params)
        return Setting(f"zero{max(stage, 1)}", offload)
    return Setting("fsdp" if strategy.name == "fsdp" else "ddp")


def print_plan(cfg: Config, world: int, gpu_memory_gib: float | None) -> None:
    rows = plan_rows(cfg, world)
    print(f"# per-rank memory on {world} rank(s), batch {cfg.train.per_device_train_batch_size}")
    for row in rows:
        print(format_row(row))
    if gpu_memory_gib is not None:
        best = cheapest_fit(rows, gpu_memory_gib * 2**30)
        print(
            f"cheapest that fits in {gpu_memory_gib} GiB: " + (format_row(best) if best else "none")
        )


def configured_line(cfg: Config, world: int) -> str:
    """The plan's line for the configured strategy, PEFT and checkpointing (for --dry-run)."""
    want = configured_setting(cfg)
    peft, ckpt = cfg.peft is not None, cfg.model.gradient_checkpointing
    for row in plan_rows(cfg, world):
        if (row.setting, row.peft, row.checkpointing) == (want, peft, ckpt):
            return "memory plan: " + format_row(row)
    return "memory plan: none"
