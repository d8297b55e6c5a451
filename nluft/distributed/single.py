"""One process on the CPU or one GPU: the reference every other backend must match."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from nluft.config import Config, Plan
from nluft.distributed.base import Strategy
from nluft.distributed.env import DistEnv
from nluft.errors import NluftError
from nluft.optim import build_optimizer, build_scheduler


class SingleStrategy(Strategy):
    """`strategy.name: single`."""

    name = "single"

    def __init__(self, cfg: Config, env: DistEnv) -> None:
        if env.world_size > 1:
            raise NluftError(
                f"strategy.name: 'single' runs one process but WORLD_SIZE={env.world_size}; "
                "choose a distributed strategy or launch one process"
            )
        super().__init__(cfg, env)

    def setup(self, model: torch.nn.Module, plan: Plan) -> None:
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, self.cfg.train)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train, plan)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> float:
        assert self.model is not None
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.max_grad_norm or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, path: Path) -> None:
        assert self.model is not None
        save_model(self.model, str(path / "model.safetensors"))
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        torch.save(state, path / "optimizer.pt")

    def load(self, path: Path, weights_only: bool = False) -> None:
        assert self.model is not None
        load_model(self.model, str(path / "model.safetensors"), device=str(self.device))
        if weights_only:
            return
        state = torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        assert self.model is not None
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
