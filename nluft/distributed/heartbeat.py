"""Which rank stopped answering: a heartbeat file per rank, read when a collective fails.

Every rank of a multi-process run has a daemon thread that rewrites RUN_DIR/heartbeats/rank-R.json
every `BEAT_S` seconds (a counter, the last optimizer step, pid, host). The thread keeps beating
while the main thread waits in a collective (torch releases the GIL there); it stops only when the
whole process does (SIGSTOP, a frozen machine, a process that died). When a collective fails (a
gloo/NCCL timeout after `strategy.timeout_s`, or a peer that closed its connection), the rank that
caught it watches the counters for `WATCH_S` seconds and names the ranks whose counter did not
move, in one line. Such a rank on this host is killed (SIGKILL): torchrun's agent would otherwise
wait 30 s for a stopped process to honour SIGTERM before ending the job. The files live in the run
directory because every rank of a run already shares it (checkpoints); no clock is compared
across hosts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nluft.distributed.env import DistEnv
from nluft.errors import NluftError

BEAT_S = 1.0  # how often a live rank rewrites its file
WATCH_S = 3.0  # how long the rank that caught a failure watches the others' counters


@dataclass(frozen=True)
class Beat:
    """One rank's last heartbeat."""

    rank: int
    count: int
    step: int
    pid: int
    host: str
    started: str  # the process start time (/proc/PID/stat), so a reused pid is never killed
    time: float


class Heartbeat:
    """A thread that rewrites this rank's heartbeat file until `stop`."""

    def __init__(self, run_dir: Path, env: DistEnv, step: Callable[[], int]) -> None:
        self.dir = run_dir / "heartbeats"
        self.env = env
        self.step = step
        self.count = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, name="nluft-heartbeat", daemon=True)

    @property
    def path(self) -> Path:
        return self.dir / f"rank-{self.env.rank}.json"

    def start(self) -> None:
        if not self.env.is_distributed:
            return  # one process: no peer to wait for
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write()
        self.thread.start()

    def run(self) -> None:
        while not self.done.wait(BEAT_S):
            self.write()

    def write(self) -> None:
        self.count += 1
        pid = os.getpid()
        beat = Beat(
            self.env.rank,
            self.count,
            self.step(),
            pid,
            socket.gethostname(),
            start_time(pid),
            time.time(),
        )
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(asdict(beat)))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a full or flaky disk must not stop training; a missed beat only looks stale

    def stop(self) -> None:
        if self.thread.is_alive():
            self.done.set()
            self.thread.join()
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.dir.rmdir()  # the last rank out removes it

    def explain(self, err: BaseException, timeout_s: float) -> None:
        """Raise an error naming the ranks that stopped answering; return when all are alive.

        Called with any RuntimeError (torch.distributed.DistError, gloo/NCCL errors); costs
        `WATCH_S` seconds, only on the way out of a failed run.
        """
        if not self.thread.is_alive():
            return
        before = read_beats(self.dir)
        time.sleep(WATCH_S)
        after = read_beats(self.dir)
        stalled = [
            after.get(rank, beat)
            for rank, beat in sorted(before.items())
            # Files of ranks beyond this world size are left from an earlier, larger run.
            if rank != self.env.rank
            and rank < self.env.world_size
            and after.get(rank, beat).count == beat.count
        ]
        if not stalled:
            return
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise NluftError(
            "; ".join(describe(beat) for beat in stalled)
            + f"; rank {self.env.rank} gave up on a collective (strategy.timeout_s="
            f"{timeout_s:g}): {reason}; resume with --resume"
        ) from err


def read_beats(directory: Path) -> dict[int, Beat]:
    beats = {}
    for path in directory.glob("rank-*.json"):
        try:
            beat = Beat(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # being replaced, or not ours
        beats[beat.rank] = beat
    return beats


def describe(beat: Beat) -> str:
    """'rank 1 stopped answering (...)', killing it first when it runs on this host."""
    where = f"pid {beat.pid} on {beat.host}"
    last = f"last heartbeat {time.time() - beat.time:.0f} s ago at step {beat.step}"
    if beat.host != socket.gethostname():
        return f"rank {beat.rank} stopped answering ({where}, {last})"
    if start_time(beat.pid) != beat.started:
        return f"rank {beat.rank} died ({where}, {last})"
    try:
        os.kill(beat.pid, signal.SIGKILL)
    except ProcessLookupError:
        return f"rank {beat.rank} died ({where}, {last})"
    return f"rank {beat.rank} stopped answering ({where}, {last}); killed it (SIGKILL)"


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat ('' when the process is gone, a zombie, or /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in "ZX" else fields[19]
