"""A multi-process trial (ddp, ZeRO, FSDP under torchrun): rank 0 alone talks to the study.

Every rank runs `nluft search`; rank 0 asks the study for a trial and publishes what to run (the
trial's overrides and whether it resumes) as draw-K.json in a folder of the run's shared output
directory; the other ranks wait for draw K, then train the same trial with it. No rank but 0
opens the journal, so one trial is one Optuna trial however many ranks train it (the HF
Trainer's per-rank studies, transformers#18609). The pruner's answer reaches every rank through
the training loop (`Strategy.any_rank`), so all ranks stop at the same step.

The folder is keyed by torchrun's run id and restart count and by the Slurm restart count, so a
relaunched job never reads the draws of an earlier launch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from nluft.config import Config
from nluft.distributed import DistEnv

POLL_S = 0.2


class DrawChannel:
    """Rank 0 publishes draw 0, 1, 2, ...; the other ranks receive them in order."""

    def __init__(self, output_dir: Path, env: DistEnv) -> None:
        launch = "-".join(
            [
                os.environ.get("TORCHELASTIC_RUN_ID", "local"),
                os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"),
                str(env.slurm_restart_count),
            ]
        )
        self.dir = output_dir / "draws" / launch
        self.count = 0

    def path(self) -> Path:
        return self.dir / f"draw-{self.count}.json"

    def publish(self, message: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path()
        tmp = final.with_suffix(".tmp")
        tmp.write_text(json.dumps(message))
        os.replace(tmp, final)  # a reader never sees half a message
        self.count += 1

    def receive(self) -> dict[str, Any]:
        """The next draw; waits as long as rank 0 does (torchrun ends us if rank 0 dies)."""
        final = self.path()
        while not final.is_file():
            time.sleep(POLL_S)
        self.count += 1
        return dict(json.loads(final.read_text()))


def keep_process_group(cfg: Config, env: DistEnv) -> None:
    """One process group for the whole search, made here so that no trial tears it down.

    The strategies destroy only a group they created; re-creating the default group under
    torchrun for every trial can hang on stale rendezvous keys.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank)
    timeout = datetime.timedelta(seconds=cfg.strategy.timeout_s)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
