"""Which rank stopped answering: a heartbeat file per rank, read when a collective fails.

Every rank of a multi-process run has a daemon thread that rewrites RUN_DIR/heartbeats/rank-R.json
every `BEAT_S` seconds (a counter, the last optimizer step, pid, host). The thread keeps beating
while the main thread waits in a collective (torch releases the GIL there); it stops only when the
whole process does (SIGSTOP, a frozen machine, a process that died). When a collective fails (a
gloo/NCCL timeout after `strategy.timeout_s`, or a peer that closed its connection), the rank that
caught it watches the counters for `WATCH_S` seconds and names the ranks whose counter did not
move, in one line. Such a rank on this host is killed (SIGKILL): torchrun's agent would otherwise
wait 30 s for a stopped process to honour SIGTERM before ending the job. Only the very process that
wrote the heartbeat is killed: its pid must still have the start time and command line the file
records (a hash of it: argv may hold secrets), checked through a pidfd so that the pid cannot be
reused between the check and the kill. The files live in the run
directory because every rank of a run already shares it (checkpoints); no clock is compared
across hosts.
"""

from __future__ import annotations

import contextlib
import hashlib
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
    cmdline: str  # sha256 of /proc/PID/cmdline: another program under the same pid is spared
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
            cmdline_hash(pid),
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
    if not kill_if_same(beat):
        return f"rank {beat.rank} died ({where}, {last})"
    return f"rank {beat.rank} stopped answering ({where}, {last}); killed it (SIGKILL)"


def is_same_process(beat: Beat) -> bool:
    """Whether beat.pid is still the process that wrote the beat (start time and command line)."""
    started, cmdline = start_time(beat.pid), cmdline_hash(beat.pid)
    return bool(started and cmdline) and (started, cmdline) == (beat.started, beat.cmdline)


def kill_if_same(beat: Beat) -> bool:
    """SIGKILL the rank's process if it is still the one that wrote `beat`; whether it was."""
    try:
        # The pidfd pins the process: if the pid is reused after this, the check below fails.
        fd = os.pidfd_open(beat.pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        fd = -1  # no pidfd (old kernel): check, then kill by pid
    try:
        if not is_same_process(beat):
            return False
        if fd >= 0:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        else:
            os.kill(beat.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd >= 0:
            os.close(fd)
    return True


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat ('' when the process is gone, a zombie, or /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in "ZX" else fields[19]


def cmdline_hash(pid: int) -> str:
    """sha256 of /proc/PID/cmdline ('' when unreadable or empty, as for a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return hashlib.sha256(raw).hexdigest() if raw else ""
