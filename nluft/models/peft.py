"""LoRA adapters through the `peft` library, on any task model nluft builds.

The task head is always trained in full (peft's `modules_to_save`), relation extraction's marker
tokens get trainable embedding rows (peft's `trainable_token_indices`), and every trainable
parameter is kept in fp32 whatever dtype the frozen backbone was loaded in.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peft
import torch

from nluft.config import PeftConfig
from nluft.errors import NluftError

ENCODER_ATTENTION = ["query", "key", "value"]
DECODER_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The projections LoRA adapts when `peft.target_modules` is not set, by `config.model_type`.
DEFAULT_TARGETS: dict[str, list[str]] = {
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "mpnet"),
        ENCODER_ATTENTION,
    ),
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    "deberta": ["in_proj"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2"), DECODER_LINEAR
    ),
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
# GPT-2 stores its projections as Conv1D (weight transposed).
FAN_IN_FAN_OUT = {"gpt2"}
# Top-level modules that are newly initialised task heads, trained in full.
HEAD_MODULES = ("classifier", "score", "qa_outputs")
# Keys nluft sets itself; `peft.options` may not override them.
OWN_KEYS = {
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "modules_to_save",
    "task_type",
    "trainable_token_indices",
}


def default_targets(model_type: str) -> list[str]:
    """LoRA target module names for an architecture; an unknown one must name its own."""
    targets = DEFAULT_TARGETS.get(model_type)
    if targets is None:
        raise NluftError(
            f"peft.target_modules: no default for model type {model_type!r}; set it to the "
            "names of the linear layers to adapt, e.g. [q_proj, v_proj], or all-linear"
        )
    return targets


def head_modules(model: torch.nn.Module, extra: list[str]) -> list[str]:
    """The task head's module names (and DeBERTa's freshly initialised pooler), plus `extra`."""
    children = dict(model.named_children())
    names = [name for name in HEAD_MODULES if name in children]
    if getattr(model.config, "model_type", "").startswith("deberta") and "pooler" in children:
        names.append("pooler")
    return [*names, *(n for n in extra if n not in names)]


def build_lora_config(
    cfg: PeftConfig, model: torch.nn.Module, trainable_tokens: list[int] | None = None
) -> peft.LoraConfig:
    """The `peft.LoraConfig` for this model: nluft's keys, defaults, and `peft.options`."""
    known = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    for key in cfg.options:
        if key in OWN_KEYS:
            raise NluftError(f"peft.options.{key}: set by nluft; use the peft.* key instead")
        if key not in known:
            raise NluftError(f"peft.options.{key}: not a peft.LoraConfig option")
    model_type = str(getattr(model.config, "model_type", ""))
    options: dict[str, Any] = {"fan_in_fan_out": model_type in FAN_IN_FAN_OUT, **cfg.options}
    if trainable_tokens:
        options["trainable_token_indices"] = trainable_tokens
    try:
        return peft.LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules or default_targets(model_type),
            modules_to_save=head_modules(model, cfg.modules_to_save),
            **options,
        )
    except (TypeError, ValueError) as err:
        raise NluftError(f"peft: {err}") from None


def apply_peft(
    model: torch.nn.Module, cfg: PeftConfig, trainable_tokens: list[int] | None = None
) -> torch.nn.Module:
    """The model with LoRA adapters; only adapters, head and new token rows are trainable."""
    lora = build_lora_config(cfg, model, trainable_tokens)
    try:
        wrapped = peft.get_peft_model(model, lora, autocast_adapter_dtype=True)
    except ValueError as err:
        raise NluftError(f"peft.target_modules: {err}") from None
    for param in wrapped.parameters():
        # fp32 master weights for what trains (the head copy keeps the backbone's dtype).
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return wrapped


def is_peft_model(model: torch.nn.Module) -> bool:
    return isinstance(model, peft.PeftModel)


def num_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitioned parameters count in full."""
    trainable = total = 0
    for param in model.parameters():
        numel = int(getattr(param, "ds_numel", param.numel()))
        total += numel
        trainable += numel if param.requires_grad else 0
    return trainable, total


def describe_parameters(model: torch.nn.Module) -> str:
    trainable, total = num_parameters(model)
    return (
        f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(1, total):.2f}%)"
    )


# --- export ----------------------------------------------------------------------------------


@contextlib.contextmanager
def plain_init() -> Iterator[None]:
    """Build modules whole on this process even while a ZeRO-3 run's config is alive.

    transformers partitions every model it builds while an `HfDeepSpeedConfig` is registered;
    an export copy on rank 0 must not be (it would wait for the other ranks).
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def save_merged_and_adapter(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], merged_dir: Path, adapter_dir: Path
) -> None:
    """Write the adapters (PEFT folder) and the merged plain model (Hugging Face folder).

    `state_dict` is the full (gathered) state of the training model; it is loaded into a fresh
    fp32 copy on the CPU, so the strategy's sharding never matters here, and peft merges it.
    """
    assert isinstance(model, peft.PeftModel), "a model built with a peft: section"
    base = model.get_base_model()
    with plain_init(), torch.device("cpu"):
        fresh: Any = type(base)(copy.deepcopy(base.config))
        fresh.config.dtype = torch.float32
        copy_model = peft.get_peft_model(fresh, copy.deepcopy(model.peft_config["default"]))
    # Non-persistent buffers (position ids) come with a ZeRO-3 gather; they are not saved.
    buffers = {name for name, _ in copy_model.named_buffers()}
    missing, unexpected = copy_model.load_state_dict(
        {
            k: v.float() if v.is_floating_point() else v
            for k, v in state_dict.items()
            if k not in buffers or k in copy_model.state_dict()
        },
        strict=False,
    )
    absent = [k for k in missing if "original_module" not in k]
    if absent or unexpected:
        raise NluftError(f"export: state does not match the model ({absent[:3]} {unexpected[:3]})")
    copy_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    merged: Any = copy_model.merge_and_unload()
    merged.save_pretrained(str(merged_dir), safe_serialization=True)
    merged.config.save_pretrained(str(adapter_dir))  # labels and head class for the base model


def load_adapter(base: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    """A PEFT folder (`RUN_DIR/export-adapter`) applied to its base model, for inference."""
    return peft.PeftModel.from_pretrained(base, str(adapter_dir))


def adapter_base_path(adapter_dir: Path) -> str:
    """The base model the adapters were trained on, as recorded by peft."""
    config = peft.PeftConfig.from_pretrained(str(adapter_dir))
    return str(config.base_model_name_or_path)
