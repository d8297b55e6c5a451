"""The Optuna study of a search: journal file on the shared filesystem, sampler, pruner, liveness.

The study lives in OUTPUT_DIR/study.journal (Optuna's JournalStorage with a file backend and the
open(O_CREAT|O_EXCL) lock that works on NFS; a lock left by a killed process is broken after
`LOCK_GRACE_S`). No database server, so Slurm array tasks on any node share it.

Workers take trials one at a time under a second lock of the same kind (study.ask.lock): a grid
point is then never handed to two workers, and the budget is never overrun. JournalStorage has no
Optuna heartbeat, so each running trial has a heartbeat file (OUTPUT_DIR/heartbeats/); a trial
whose worker is gone (its pid is dead on this host, or its file is older than `search.grace_s`)
is failed and re-enqueued with the same parameters by Optuna's RetryFailedTrialCallback; the
retry resumes the trial's run directory from its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nluft.config import SearchConfig
from nluft.search import space

STUDY_NAME = "nluft"
LOCK_GRACE_S = 30  # a journal lock older than this was left by a killed process
BEAT_S = 2.0
FINISHED = ("COMPLETE", "PRUNED")


def journal_path(output_dir: Path) -> Path:
    return output_dir / "study.journal"


def file_lock(path: Path) -> Any:
    from optuna.storages.journal import JournalFileOpenLock

    return JournalFileOpenLock(str(path), grace_period=LOCK_GRACE_S)


def build_storage(output_dir: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = journal_path(output_dir)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=file_lock(path)))


def build_sampler(search: SearchConfig, draw: int) -> Any:
    """A sampler seeded by `search.seed` and the trial's draw number.

    Seeding per draw keeps a seeded search reproducible however many workers take part and
    however often it is resumed (a sampler made anew would repeat its first draws).
    """
    import optuna

    if search.method == "grid":  # the seed shuffles the grid: it must not change between draws
        return optuna.samplers.GridSampler(space.grid(search), seed=search.seed)
    seed = search.seed * 100_003 + draw
    if search.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials)


def build_pruner(search: SearchConfig) -> Any:
    import optuna

    if search.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=search.pruner_startup_trials,
            n_warmup_steps=search.pruner_warmup_steps,
        )
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(output_dir: Path, search: SearchConfig, direction: Any) -> Any:
    """Create the study, or load it to continue; quiet Optuna's per-trial logging."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    output_dir.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        storage=build_storage(output_dir),
        study_name=STUDY_NAME,
        direction=direction,
        sampler=build_sampler(search, 0),
        pruner=build_pruner(search),
        load_if_exists=True,
    )


@contextlib.contextmanager
def ask_lock(output_dir: Path) -> Iterator[None]:
    lock = file_lock(output_dir / "study.ask.lock")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def counts(study: Any) -> dict[str, int]:
    """Trials per state; a failed trial that was retried counts only through its retry."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name
        if state == "FAIL" and "error" not in trial.user_attrs:
            continue  # stopped or lost: its retry (WAITING/RUNNING/...) stands for it
        out[state] = out.get(state, 0) + 1
    return out


def root_number(study: Any, trial: Any) -> int:
    """The number of the first attempt of a (retried) trial: it names the run directory."""
    frozen = study._storage.get_trial(trial._trial_id)
    return int(frozen.system_attrs.get("failed_trial", trial.number))


def heartbeat_path(output_dir: Path, number: int) -> Path:
    return output_dir / "heartbeats" / f"trial-{number:03d}.json"


class TrialHeartbeat:
    """A daemon thread that rewrites the trial's heartbeat file while the trial runs."""

    def __init__(self, output_dir: Path, number: int) -> None:
        self.path = heartbeat_path(output_dir, number)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, name="nluft-trial-beat", daemon=True)

    def beat(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        beat = {"time": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(beat))
        os.replace(tmp, self.path)

    def run(self) -> None:
        while not self.done.wait(BEAT_S):
            with contextlib.suppress(OSError):
                self.beat()

    def __enter__(self) -> TrialHeartbeat:
        self.beat()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        with contextlib.suppress(OSError):
            self.path.unlink()


def is_stale(output_dir: Path, number: int, grace_s: float) -> bool:
    """The trial's worker is gone: its pid died on this host, or it has been silent too long."""
    try:
        beat = json.loads(heartbeat_path(output_dir, number).read_text())
    except (OSError, ValueError):
        return True  # a RUNNING trial always has a beat (written under the ask lock)
    if beat.get("host") == socket.gethostname():
        try:
            os.kill(int(beat["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    return time.time() - float(beat["time"]) > grace_s


def retry_stale_trials(study: Any, output_dir: Path, search: SearchConfig) -> list[int]:
    """Fail the running trials whose worker is gone and enqueue their retries (under the lock)."""
    from optuna.trial import TrialState

    retry = retry_callback(search)
    retried = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(output_dir, trial.number, search.grace_s):
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            retry(study, study._storage.get_trial(trial._trial_id))
            retried.append(trial.number)
    return retried


def retry_now(study: Any, trial: Any, search: SearchConfig) -> None:
    """A trial stopped on request (its checkpoint written): fail it and enqueue its retry."""
    from optuna.trial import TrialState

    tell(study, trial, state=TrialState.FAIL)
    retry = retry_callback(search)
    retry(study, study._storage.get_trial(trial._trial_id))


def retry_callback(search: SearchConfig) -> Any:
    """Optuna's callback that enqueues a failed trial again with its parameters and reports."""
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(
            max_retry=search.max_retries, inherit_intermediate_values=True
        )


def tell(study: Any, trial: Any, value: float | None = None, state: Any = None) -> None:
    """Finish a trial. The worker loop decides when the study ends: GridSampler's after_trial
    would call study.stop() on the last grid point, which works only inside study.optimize."""
    import optuna

    if isinstance(study.sampler, optuna.samplers.GridSampler):
        study.sampler = optuna.samplers.RandomSampler()
    study.tell(trial, value, state=state)
