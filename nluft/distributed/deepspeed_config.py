"""The DeepSpeed JSON, derived from the nluft config by pure functions (no deepspeed import).

Every value the engine needs is resolved here: nothing is left as "auto". A user JSON
(`strategy.deepspeed_config`) may add keys; one that contradicts the nluft config is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nluft.config import Config
from nluft.errors import NluftError

DEFAULT_ZERO_STAGE = 2

# Where each derived DeepSpeed key comes from, so a conflict can name the nluft key to change.
SOURCES = {
    "train_micro_batch_size_per_gpu": "train.per_device_train_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "train_batch_size": "train.per_device_train_batch_size x world size x accumulation",
    "gradient_clipping": "train.max_grad_norm",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "zero_optimization": "strategy.zero_stage / strategy.offload_*",
    "optimizer": "train.learning_rate / adam_* / weight_decay",
}


def zero_stage(cfg: Config) -> int:
    """`strategy.zero_stage`, defaulting to ZeRO-2."""
    stage = cfg.strategy.zero_stage
    return DEFAULT_ZERO_STAGE if stage is None else stage


def build_deepspeed_config(cfg: Config, world_size: int, device_type: str) -> dict[str, Any]:
    """The DeepSpeed JSON for this nluft config, world size and device type ("cpu" or "cuda")."""
    train = cfg.train
    micro, accum = train.per_device_train_batch_size, train.gradient_accumulation_steps
    return {
        "train_batch_size": micro * accum * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        # nluft's loop calls backward per micro-batch (loss already divided by the accumulation
        # steps) and step once per boundary: the caller owns the boundary, not DeepSpeed's counter.
        "managed_gradient_accumulation": False,
        "gradient_clipping": train.max_grad_norm,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": fp16_section(train.precision == "fp16"),
        "zero_optimization": zero_section(cfg, device_type),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.learning_rate,
                "betas": [train.adam_beta1, train.adam_beta2],
                "eps": train.adam_epsilon,
                "weight_decay": train.weight_decay,
                "adam_w_mode": True,
                # torch's AdamW on the CPU: DeepSpeed's own Adam ops JIT-compile for minutes.
                "torch_adam": device_type == "cpu",
            },
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def fp16_section(enabled: bool) -> dict[str, Any]:
    """Dynamic loss scaling (loss_scale 0) with GradScaler-like defaults."""
    if not enabled:
        return {"enabled": False}
    return {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 16,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "min_loss_scale": 1,
    }


def zero_section(cfg: Config, device_type: str) -> dict[str, Any]:
    """ZeRO stage and optional CPU offload of optimizer state and (ZeRO-3) parameters."""
    strategy, stage = cfg.strategy, zero_stage(cfg)
    section: dict[str, Any] = {"stage": stage}
    pin = device_type == "cuda"
    if strategy.offload_optimizer:
        if stage == 0:
            raise NluftError("strategy.offload_optimizer: needs strategy.zero_stage >= 1")
        section["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if strategy.offload_params:
        section["offload_param"] = {"device": "cpu", "pin_memory": pin}
    if stage == 3:
        # Export gathers weights itself; DeepSpeed need not gather 16-bit weights on every save.
        section["stage3_gather_16bit_weights_on_model_save"] = False
    return section


def read_user_config(path: str) -> dict[str, Any]:
    """The user's DeepSpeed JSON (`strategy.deepspeed_config`), checked to be a JSON object."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NluftError(f"strategy.deepspeed_config: file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise NluftError(f"strategy.deepspeed_config: cannot read {path} as JSON: {err}") from None
    if not isinstance(raw, dict):
        raise NluftError(f"strategy.deepspeed_config: {path} must hold a JSON object")
    return raw


def merge_user_config(
    derived: dict[str, Any], user: dict[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """Derived config plus the user's extra keys; "auto" takes ours, another value is an error."""
    merged = dict(derived)
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if value == "auto" and key not in derived:
            raise NluftError(
                f"strategy.deepspeed_config: key '{dotted}' is 'auto' but nluft does not derive "
                "it; give a value"
            )
        if key not in derived or value == "auto":
            merged.setdefault(key, value)
            continue
        ours = derived[key]
        if isinstance(ours, dict) and isinstance(value, dict):
            merged[key] = merge_user_config(ours, value, f"{dotted}.")
        elif value != ours:
            source = SOURCES.get(dotted.split(".")[0], "the nluft config")
            raise NluftError(
                f"strategy.deepspeed_config: key '{dotted}' is {value!r} but the nluft config "
                f"gives {ours!r}; set it through {source} or drop it from the JSON"
            )
    return merged


def resolve_deepspeed_config(cfg: Config, world_size: int, device_type: str) -> dict[str, Any]:
    """The final DeepSpeed JSON: derived from `cfg`, merged with the user's JSON if any."""
    derived = build_deepspeed_config(cfg, world_size, device_type)
    if cfg.strategy.deepspeed_config is None:
        return derived
    return merge_user_config(derived, read_user_config(cfg.strategy.deepspeed_config))
