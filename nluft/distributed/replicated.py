"""What `single` and `ddp` share: a full model copy per rank, torch AdamW, GradScaler, one file set.

Both keep the whole model and optimizer state on every rank, so a checkpoint is the same two
files whatever the world size: `model.safetensors` and `optimizer.pt`. That is what lets a ddp
run resume on a different number of ranks.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from nluft.config import Plan
from nluft.distributed.base import StepResult, Strategy, check_trainable_keys, overflow_is_fault
from nluft.errors import NluftError
from nluft.optim import build_optimizer, build_scheduler

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


class ReplicatedStrategy(Strategy):
    """Optimizer, schedule, loss scaling, clipping and the checkpoint format of replicated models.

    Subclasses place the model with `wrap` (identity here; DDP wraps it) and may limit who
    writes in `save`; the math of a step is the same for all of them.
    """

    def setup(self, model: torch.nn.Module, plan: Plan) -> None:
        model = model.to(self.device)
        # The optimizer holds the plain module's parameters; a wrapper shares the same tensors.
        self.optimizer = build_optimizer(model, self.cfg.train, fused=True)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train, plan)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.effective_batch = plan.effective_batch
        self.model = self.wrap(model)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the loop calls (the model itself for one process)."""
        return model

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> StepResult:
        assert self.model is not None
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 0.0
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.max_grad_norm or float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        finite = math.isfinite(norm)
        if not finite and not self.scaler.is_enabled():
            self.optimizer.zero_grad(set_to_none=True)  # skip the update: weights stay finite
        else:
            self.scaler.step(self.optimizer)  # fp16: skips the update itself on an overflow
            self.scaler.update()
        self.scheduler.step()  # also on a skipped update: the schedule follows global_step
        self.optimizer.zero_grad(set_to_none=True)
        return step_result(norm, self.scaler.is_enabled(), scale)

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, path: Path) -> None:
        model = self.unwrapped()
        if self.trainable_only:  # the frozen backbone is the pre-trained one: not saved again
            trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
            save_file(trained, str(path / MODEL_FILE))
        else:
            save_model(model, str(path / MODEL_FILE))
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "effective_batch": self.effective_batch,
        }
        torch.save(state, path / OPTIMIZER_FILE)

    def load(self, path: Path, weights_only: bool = False) -> None:
        model = self.unwrapped()
        if self.trainable_only:
            trained = load_file(str(path / MODEL_FILE), device=str(self.device))
            check_trainable_keys(model, set(trained), path)
            model.load_state_dict(trained, strict=False)
        else:
            load_model(model, str(path / MODEL_FILE), device=str(self.device))
        if weights_only:
            return
        state = torch.load(path / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        check_effective_batch(
            state.get("effective_batch"), self.effective_batch, self.env.world_size
        )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        return {k: v.detach().cpu() for k, v in self.unwrapped().state_dict().items()}


def check_effective_batch(saved: int | None, now: int, world_size: int) -> None:
    """Resuming continues the saved batch order, which is only valid for the same global batch."""
    if saved is None or saved == now:
        return
    raise NluftError(
        f"train.per_device_train_batch_size: the checkpoint was written with an effective "
        f"batch of {saved}, this run has {now} on {world_size} rank(s); set "
        f"per_device_train_batch_size x ranks x gradient_accumulation_steps = {saved} to resume"
    )


def step_result(norm: float, loss_scaling: bool, scale_before: float) -> StepResult:
    """A non-finite norm skips the update; with fp16 loss scaling it is a fault only once the
    scale has calibrated down to its floor (an overflow at a high scale is the scaler's job)."""
    if math.isfinite(norm):
        return StepResult(norm)
    fault = overflow_is_fault(scale_before) if loss_scaling else True
    return StepResult(norm, skipped=True, fault=fault)


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full model weights of a `single`/`ddp` checkpoint (one file)."""
    return load_file(str(checkpoint / MODEL_FILE))
