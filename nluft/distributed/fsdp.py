"""`strategy.name: fsdp`: FSDP2 `fully_shard` per transformer layer and at the root.

Checkpoints are torch.distributed.checkpoint (DCP) directories, one shard file per rank; DCP
reshards on load, so a run resumes on any number of ranks with model and optimizer state intact.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor

from nluft.config import Config, Plan
from nluft.distributed.base import DTYPES, StepResult, check_trainable_keys, trainable_names
from nluft.distributed.env import DistEnv
from nluft.distributed.group import GroupCollectives, ensure_process_group
from nluft.distributed.meta_init import shard_deferred
from nluft.errors import NluftError
from nluft.models.lazy import deferred_weights
from nluft.optim import build_optimizer, build_scheduler

DCP_DIR = "dcp"
SCHEDULER = "scheduler.pt"


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks Hugging Face marks as never to be split (`_no_split_modules`), e.g. BertLayer."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    if not layers:
        raise NluftError(
            f"strategy.name: fsdp found no transformer layers in {type(model).__name__} "
            "(no _no_split_modules); use strategy.name=deepspeed or single"
        )
    return layers


def shard_layers(model: torch.nn.Module, options: dict[str, Any]) -> None:
    """`fully_shard` each transformer layer, then the root (embeddings, head)."""
    for layer in transformer_layers(model):
        fully_shard(layer, **options)
    fully_shard(model, **options)


class FSDPStrategy(GroupCollectives):
    """`strategy.name: fsdp`."""

    name = "fsdp"

    @property
    def defers_weights(self) -> bool:
        """Meta-device initialisation unless `strategy.fsdp_meta_init: false`."""
        return self.cfg.strategy.fsdp_meta_init is not False

    def __init__(self, cfg: Config, env: DistEnv) -> None:
        super().__init__(cfg, env)
        if env.is_distributed:
            ensure_process_group(self.device, self.cfg.strategy.timeout_s, self.env.is_distributed)

    def describe(self) -> dict[str, Any]:
        strategy = self.cfg.strategy
        return {
            "fsdp": {
                "param_dtype": self.precision,
                "reduce_dtype": "fp32",
                "cpu_offload": bool(strategy.fsdp_cpu_offload),
                "reshard_after_forward": strategy.fsdp_reshard_after_forward is not False,
                "meta_init": self.defers_weights,
            }
        }

    def setup(self, model: torch.nn.Module, plan: Plan) -> None:
        strategy = self.cfg.strategy
        ensure_process_group(self.device, self.cfg.strategy.timeout_s, self.env.is_distributed)
        mesh = init_device_mesh(self.device.type, (self.env.world_size,))
        # Parameters are gathered in the training precision; gradients are reduced in fp32.
        precision = None if self.precision == "fp32" else DTYPES[self.precision]
        options: dict[str, Any] = {
            "mesh": mesh,
            "mp_policy": MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=torch.float32),
            "offload_policy": (
                CPUOffloadPolicy(pin_memory=self.device.type == "cuda")
                if strategy.fsdp_cpu_offload
                else OffloadPolicy()
            ),
            "reshard_after_forward": strategy.fsdp_reshard_after_forward is not False,
        }
        weights = deferred_weights(model)
        if weights is not None:  # meta-device initialisation (distributed/meta_init.py)
            device = torch.device("cpu") if strategy.fsdp_cpu_offload else self.device
            shard_deferred(model, weights, lambda m: shard_layers(m, options), device)
        else:
            if not strategy.fsdp_cpu_offload:
                model = model.to(self.device)
            shard_layers(model, options)
        self.model = model
        self.optimizer = build_optimizer(model, self.cfg.train)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train, plan)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        # MixedPrecisionPolicy casts parameters and inputs; autocast on top would be redundant.
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally; reduce-scatter only on the accumulation boundary."""
        model = self.fsdp_model()
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def fsdp_model(self) -> FSDPModule:
        assert isinstance(self.model, FSDPModule), "setup() first"
        return self.model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> StepResult:
        assert self.model is not None
        max_norm = self.cfg.train.max_grad_norm or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        finite = bool(torch.isfinite(norm))
        if finite:
            self.optimizer.step()  # else skip the update: weights stay finite
        self.scheduler.step()  # also on a skipped update: the schedule follows global_step
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(float(norm), skipped=not finite, fault=not finite)

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # --- state -------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Sharded model and optimizer state (DCP); the schedule is tiny and the same everywhere."""
        assert self.model is not None
        model_state, optim_state = self.state_dicts()
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path / DCP_DIR))
        if self.env.is_main:
            torch.save(self.scheduler.state_dict(), path / SCHEDULER)

    def load(self, path: Path, weights_only: bool = False) -> None:
        """DCP reads whatever shards this world size needs, whatever world size saved them."""
        assert self.model is not None
        model_state, optim_state = self.state_dicts()
        if self.trainable_only:
            check_trainable_keys(self.model, set(model_state), path)
        # dcp.load fills these state dicts in place.
        state: dict[str, Any] = {"model": model_state}
        if not weights_only:
            state["optim"] = optim_state
        dcp.load(state, checkpoint_id=str(path / DCP_DIR))
        # Trainable-only (PEFT) state leaves the frozen backbone as loaded.
        options = StateDictOptions(strict=not self.trainable_only)
        if weights_only:
            set_model_state_dict(self.model, model_state, options=options)
            return
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=model_state,
            optim_state_dict=optim_state,
            options=options,
        )
        self.scheduler.load_state_dict(torch.load(path / SCHEDULER, weights_only=True))

    def state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Sharded model and optimizer state; with PEFT only the trainable parameters."""
        assert self.model is not None
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        if self.trainable_only:
            keep = trainable_names(self.model)
            model_state = {k: v for k, v in model_state.items() if k in keep}
        return model_state, optim_state

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights gathered to the CPU of rank 0 only; no optimizer state."""
        assert self.model is not None
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=options)
        return cast(dict[str, torch.Tensor], state) if self.env.is_main else None

    def local_numel(self, param: torch.nn.Parameter) -> int:
        if isinstance(param, DTensor):
            return int(param.to_local().numel())
        return param.numel()


def read_weights(checkpoint: Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full model weights from an FSDP checkpoint, read by one plain process (no group).

    DCP fills `template` (the model's own state dict) from every rank's shard file; the
    optimizer state in the same files is not read.
    """
    state = {"model": {k: v.detach().clone() for k, v in template.items()}}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(checkpoint / DCP_DIR), no_dist=True)
    return state["model"]
