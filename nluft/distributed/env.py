"""The only reader of torchrun's and Slurm's environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job; passed to everything that needs to know."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    # Slurm's view of the job (None outside Slurm): recorded by the tracker, never used for ranks.
    slurm_job_id: str | None = None
    slurm_array_job_id: str | None = None
    slurm_array_task_id: str | None = None
    slurm_restart_count: int = 0
    slurm_node_list: str | None = None
    # Set by the job script of `nluft submit`: a stopped job is requeued (nluft.preemption), by
    # rank 0 (NLUFT_REQUEUE=1) or, once every node has exited, by the script (=launcher).
    slurm_requeue: bool = False
    slurm_requeue_by_launcher: bool = False
    slurm_max_requeues: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def read_dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE as torchrun sets them (default: 1 process).

    Also the Slurm job id, array job and task ids, restart count (unset before the first
    requeue) and node list, so that a requeued or array job can be identified; and whether
    `nluft submit`'s script asked rank 0 to requeue the job after a stop (NLUFT_REQUEUE=1,
    NLUFT_MAX_REQUEUES).
    """
    env = os.environ if environ is None else environ
    return DistEnv(
        rank=int(env.get("RANK", 0)),
        local_rank=int(env.get("LOCAL_RANK", 0)),
        world_size=int(env.get("WORLD_SIZE", 1)),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
        slurm_job_id=env.get("SLURM_JOB_ID"),
        slurm_array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
        slurm_array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
        slurm_restart_count=int(env.get("SLURM_RESTART_COUNT") or 0),
        slurm_node_list=env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST"),
        slurm_requeue=env.get("NLUFT_REQUEUE") in ("1", "launcher"),
        slurm_requeue_by_launcher=env.get("NLUFT_REQUEUE") == "launcher",
        slurm_max_requeues=int(env.get("NLUFT_MAX_REQUEUES") or 0),
    )
