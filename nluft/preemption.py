"""Stop requests (preemption, wall time) and the Slurm requeue that resumes a stopped run.

SIGTERM and SIGUSR1 only set a flag. The training loop (every micro-batch) and the evaluation
loop (every batch) agree on it across ranks, so all ranks stop at the same point; the run then
checkpoints and exits with code 3. In a job rendered by `nluft submit` (which exports
NLUFT_REQUEUE=launcher and NLUFT_MAX_REQUEUES), the job script calls `scontrol requeue` once every
node has exited, and the requeued job runs `nluft train --resume`; with NLUFT_REQUEUE=1 (scripts
rendered before) rank 0 calls it itself. Requeueing a running job makes slurmctld signal and, after
KillWait, kill every process of the job, so it is the very last thing the run does: after the
checkpoint, metrics.jsonl and the W&B run are written and closed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

from nluft.distributed import DistEnv, Strategy

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopFlag:
    """Set by SIGTERM/SIGUSR1 on this rank; `agree` makes every rank see the same answer."""

    def __init__(self) -> None:
        self.requested = False  # this rank received a signal
        self.agreed = False  # every rank knows that some rank received one
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.handle)

    def handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def agree(self, strategy: Strategy) -> bool:
        """Whether any rank was asked to stop. A collective: every rank calls it at one point.

        A signal reaches the ranks at slightly different times; acting on the local flag alone
        would let one rank leave the loop while another waits for it in a collective.
        """
        if not self.agreed:
            self.agreed = strategy.any_rank(self.requested)
            if self.agreed:
                # From here on the run stops by itself. A later signal (torchrun's agent tearing
                # down the ranks once one has exited, a requeue) must not kill it while it writes,
                # nor at interpreter exit, where Python restores the default handlers.
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_IGN)
        return self.agreed


def will_requeue(env: DistEnv) -> bool:
    """Rank 0 of a requeueable Slurm job that has requeues left: it requeues when stopped."""
    return (
        env.is_main
        and env.slurm_requeue
        and env.slurm_job_id is not None
        and env.slurm_restart_count < env.slurm_max_requeues
    )


def requeue_after_stop(env: DistEnv) -> None:
    """On rank 0 of a Slurm job from `nluft submit`: requeue it, or say why not.

    Call only once everything is written: slurmctld ends this process soon after.
    """
    if not (env.is_main and env.slurm_requeue and env.slurm_job_id):
        return
    if env.slurm_requeue_by_launcher:
        return  # the job script requeues once every node has exited: nothing is killed mid-way
    job, done, limit = env.slurm_job_id, env.slurm_restart_count, env.slurm_max_requeues
    if not will_requeue(env):
        say(
            f"nluft: not requeueing job {job}: it was requeued {done} times already "
            f"(--max-requeues {limit}); resubmit its job script to continue from the checkpoint"
        )
        return
    say(f"nluft: requeueing job {job} ({done + 1} of {limit}) to resume from the checkpoint")
    try:
        proc = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        say(f"nluft: scontrol requeue {job} failed ({err}); resubmit the job script to continue")
        return
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
        say(f"nluft: scontrol requeue {job} failed ({reason}); resubmit the job script to continue")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
