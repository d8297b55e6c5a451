"""One process on the CPU or one GPU: the reference every other backend must match."""

from __future__ import annotations

from nluft.config import Config
from nluft.distributed.env import DistEnv
from nluft.distributed.replicated import ReplicatedStrategy
from nluft.errors import NluftError


class SingleStrategy(ReplicatedStrategy):
    """`strategy.name: single`: the plain model, AdamW and (fp16) loss scaling, nothing wrapped."""

    name = "single"

    def __init__(self, cfg: Config, env: DistEnv) -> None:
        if env.world_size > 1:
            raise NluftError(
                f"strategy.name: 'single' runs one process but WORLD_SIZE={env.world_size}; "
                "choose a distributed strategy or launch one process"
            )
        super().__init__(cfg, env)
