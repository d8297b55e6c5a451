"""The `Strategy` interface: everything the training loop needs from a distributed backend.

The loop calls only these methods and never asks which backend runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nluft.config import Config, Plan
from nluft.distributed.env import DistEnv
from nluft.errors import NluftError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(requested: str, env: DistEnv) -> torch.device:
    """`auto` picks this rank's GPU when CUDA is available, else the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise NluftError("train.device: cuda requested but no CUDA GPU is visible; use auto or cpu")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", env.local_rank)


# The loss scale at or below which an fp16 overflow is a real fault, not calibration: the scaler
# has halved from 2**16 sixteen times, and gradients that still overflow are NaN/Inf themselves.
MIN_LOSS_SCALE = 1.0


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did.

    `grad_norm` is None when the backend cannot tell (never read as NaN). `skipped`: the update
    was not applied. `fault`: the loss or gradient was really NaN/Inf; an fp16 loss-scaler
    overflow while the scale calibrates is skipped but is no fault.
    """

    grad_norm: float | None
    skipped: bool = False
    fault: bool = False


def overflow_is_fault(scale_before: float) -> bool:
    """An fp16 overflow skip counts as a fault only once the scale cannot usefully drop further."""
    return scale_before <= MIN_LOSS_SCALE


class Strategy(ABC):
    """Owns the wrapped model, optimizer, scheduler and precision for one backend."""

    name: str

    def __init__(self, cfg: Config, env: DistEnv) -> None:
        self.cfg = cfg
        self.env = env
        self.device = resolve_device(cfg.train.device, env)
        self.precision = cfg.train.precision
        if self.precision == "fp16" and self.device.type != "cuda":
            raise NluftError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        check_attention(cfg.model.attn_implementation, self.device)
        self.model: torch.nn.Module | None = None

    # --- set-up ------------------------------------------------------------------------------

    @abstractmethod
    def setup(self, model: torch.nn.Module, plan: Plan) -> None:
        """Place and wrap the model; build the optimizer and schedule for `plan`."""

    def model_init_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which the model is constructed (ZeRO-3 partitions while loading)."""
        return contextlib.nullcontext()

    @property
    def defers_weights(self) -> bool:
        """Whether `setup` reads the pre-trained weights itself, per shard (FSDP2 meta init):
        the model is then built with `build_model(lazy=True)`."""
        return False

    def describe(self) -> dict[str, Any]:
        """Backend-specific derived settings for --dry-run and plan.json (the DeepSpeed JSON)."""
        return {}

    def setup_inference(self, model: torch.nn.Module) -> None:
        """Place the model for evaluation or prediction only (no optimizer)."""
        self.model = model.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward pass (no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    # --- one optimizer step ------------------------------------------------------------------

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate one micro-batch's loss (already divided for accumulation)."""

    @abstractmethod
    def step(self) -> StepResult:
        """Clip, apply and zero the gradients, advance the schedule (also when the update is
        skipped, so the learning rate always follows the step count)."""

    def no_sync(self) -> contextlib.AbstractContextManager[Any]:
        """Skip gradient synchronisation on accumulation micro-batches (no-op by default)."""
        return contextlib.nullcontext()

    @property
    @abstractmethod
    def learning_rate(self) -> float:
        """Current learning rate of the first parameter group."""

    # --- state -------------------------------------------------------------------------------

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write model, optimizer and schedule state into the directory `path` (all ranks call)."""

    @abstractmethod
    def load(self, path: Path, weights_only: bool = False) -> None:
        """Restore what `save` wrote; `weights_only` restores just the model (best at end)."""

    @abstractmethod
    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full model weights on rank 0 (None elsewhere), for a Hugging Face export."""

    @property
    def trainable_only(self) -> bool:
        """Checkpoints hold only what trains (adapters, head) when the backbone is frozen."""
        return self.cfg.peft is not None

    def unwrapped(self) -> torch.nn.Module:
        """The plain Hugging Face model inside any wrapper."""
        assert self.model is not None, "setup() first"
        return self.model

    # --- memory accounting -------------------------------------------------------------------

    def local_numel(self, param: torch.nn.Parameter) -> int:
        """Elements of `param` stored on this rank (sharding backends override)."""
        return param.numel()

    def memory_report(self) -> dict[str, int]:
        """Bytes of parameters, gradients and AdamW state held by this rank, from local numel."""
        params = grads = trainable = 0
        for param in self.unwrapped().parameters():
            numel = self.local_numel(param)
            params += numel * param.element_size()
            if param.requires_grad:
                # Gradients match the parameter dtype.
                grads += numel * param.element_size()
                trainable += numel
        # AdamW keeps exp_avg and exp_avg_sq in fp32.
        return model_state_bytes(params, grads, trainable * 2 * 4)

    # --- collectives -------------------------------------------------------------------------

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """One picklable object from each rank, in rank order."""
        return [obj]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when any rank passes True (stop requests, bad steps)."""
        return flag

    def mean(self, value: float) -> float:
        """Average of a number over ranks."""
        return value

    def close(self) -> None:
        """Tear down process groups."""

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        model = self.unwrapped()
        model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            model.train()


def check_attention(implementation: str | None, device: torch.device) -> None:
    """flash_attention_2 runs only on CUDA GPUs, with the flash-attn package: refused up front."""
    if implementation != "flash_attention_2":
        return
    if device.type != "cuda":
        raise NluftError(
            "model.attn_implementation: flash_attention_2 needs a CUDA GPU, this run is on "
            f"{device.type}; use sdpa (or eager) here"
        )
    if importlib.util.find_spec("flash_attn") is None:
        raise NluftError(
            "model.attn_implementation: flash_attention_2 needs the flash-attn package "
            "(pip install flash-attn --no-build-isolation); or use sdpa"
        )


def model_state_bytes(params: int, grads: int, optimizer: int) -> dict[str, int]:
    """The memory report's record: bytes per kind and their total."""
    return {
        "params_bytes": params,
        "grads_bytes": grads,
        "optimizer_bytes": optimizer,
        "total_bytes": params + grads + optimizer,
    }


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def check_trainable_keys(model: torch.nn.Module, keys: set[str], path: Path) -> None:
    """A trainable-only checkpoint must hold every trainable parameter of this model."""
    missing = sorted(trainable_names(model) - keys)
    if missing:
        raise NluftError(
            f"{path}: checkpoint lacks {len(missing)} trainable parameters ({missing[0]}, ...); "
            "it was written with another peft: section or model"
        )
