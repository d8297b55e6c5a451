"""Stop requests (preemption, wall time).

SIGTERM and SIGUSR1 only set a flag. The training loop (every step) and the evaluation loop
(every batch) agree on it across ranks, so all ranks stop at the same point; the run then
checkpoints and exits with code 3.
"""

from __future__ import annotations

import signal
from typing import Any

from nluft.distributed import Strategy


class StopFlag:
    """Set by SIGTERM/SIGUSR1 on this rank; `agree` makes every rank see the same answer."""

    def __init__(self) -> None:
        self.requested = False  # this rank received a signal
        self.agreed = False  # every rank knows that some rank received one
        for sig in (signal.SIGTERM, signal.SIGUSR1):
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
        return self.agreed
