"""`nluft search`: workers that take trials from the study and run each as a normal run.

Each trial is a run directory OUTPUT_DIR/trial-NNN/ (its own config.yaml, metrics.jsonl,
checkpoints, results and export), trained in this process by `nluft.train.main`. After each
validation the trial reports its metric to Optuna; a pruned trial stops there (a `pruned` event in
its metrics.jsonl) and is told PRUNED, not failed. A trial stopped by a signal is failed and
re-enqueued with the same parameters; its retry resumes trial-NNN from its checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nluft.config import Config, SearchConfig, apply_override, check_files, read_yaml, validate
from nluft.errors import NluftError
from nluft.search import space
from nluft.search import study as studies
from nluft.search.ranks import DrawChannel, keep_process_group

EXIT_STOPPED = 3
POLL_S = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class Search:
    """One worker's view of the search: the config, the objective and the study."""

    raw: dict[str, Any]
    source: str
    cfg: Config
    search: SearchConfig
    budget: int
    metric: str
    direction: str
    output_dir: Path
    requeue: bool = False
    stop_requested: bool = False
    channel: DrawChannel | None = None  # a multi-process trial: rank 0 publishes each draw

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True


class Reporter:
    """Reports each validation metric to the trial; says whether the pruner stops it.

    Only rank 0 holds a trial (other ranks pass None and answer False); the training loop
    ORs the answer over ranks, so every rank stops at the same step.
    """

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned = False

    def __call__(self, step: int, metrics: dict[str, float]) -> bool:
        if self.trial is None or self.metric not in metrics:
            return False
        value = float(metrics[self.metric])
        if math.isfinite(value):
            self.trial.report(value, step)
        self.pruned = bool(self.trial.should_prune())
        return self.pruned


def load_search(config_path: str, overrides: list[str], requeue: bool = False) -> Search:
    """Read and check the config and its `search:` section (bad input: one line, exit 2)."""
    raw = read_yaml(config_path)
    for item in overrides:
        apply_override(raw, item)
    cfg = validate(raw, config_path)
    check_files(cfg)
    if cfg.search is None:
        raise NluftError(
            f"{config_path}: no 'search' section; add search.space (see README: hyperparameter "
            "search)"
        )
    budget = space.check_space(raw, cfg.search, config_path)
    metric, direction = objective(cfg, cfg.search)
    return Search(
        raw, config_path, cfg, cfg.search, budget, metric, direction, Path(cfg.output_dir), requeue
    )


def objective(cfg: Config, search: SearchConfig) -> tuple[str, str]:
    """The validation metric and its direction (default: the run's best-model metric)."""
    from nluft.tasks import build_task

    metric = search.metric or cfg.train.metric_for_best_model or build_task(cfg).default_metric
    if search.direction:
        return metric, search.direction
    greater = cfg.train.greater_is_better
    greater = (metric != "loss") if greater is None or search.metric else greater
    return metric, "maximize" if greater else "minimize"


def run_search(config_path: str, overrides: list[str], parallel: int, requeue: bool) -> int:
    """Run workers until the study holds `budget` finished trials; the exit code."""
    if parallel < 1:
        raise NluftError("--parallel must be at least 1")
    from nluft.distributed import read_dist_env

    ctx = load_search(config_path, overrides, requeue)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    env = read_dist_env()
    if env.is_distributed:  # under torchrun: every rank trains each trial, rank 0 asks
        if parallel > 1:
            raise NluftError("--parallel: under torchrun each trial already uses every rank")
        ctx.channel = DrawChannel(ctx.output_dir, env)
        keep_process_group(ctx.cfg, env)
        if not env.is_main:
            return follow(ctx)
    study = open_checked_study(ctx)
    helpers = [spawn_worker(config_path, overrides) for _ in range(1, parallel)]
    try:
        code = work(ctx, study)
    finally:
        for proc in helpers:
            if ctx.stop_requested:
                proc.send_signal(signal.SIGTERM)  # they checkpoint their trials too
            proc.wait()
    if ctx.channel is not None:
        ctx.channel.publish({"exit": code})
    codes = [code, *(p.returncode for p in helpers)]
    if EXIT_STOPPED in codes:
        return EXIT_STOPPED
    return next((c for c in codes if c), 0)


def spawn_worker(config_path: str, overrides: list[str]) -> subprocess.Popen[bytes]:
    """Another worker process on the same study (`--parallel K`)."""
    cmd = [sys.executable, "-m", "nluft", "search", config_path, *overrides]
    proc = subprocess.Popen(cmd)
    print(f"search: started worker pid {proc.pid}", flush=True)
    return proc


def open_checked_study(ctx: Search) -> Any:
    """Open the study; refuse one created from a different search section or metric."""
    study = studies.open_study(ctx.output_dir, ctx.search, ctx.direction)
    signature = {
        "space": ctx.search.model_dump(mode="json", by_alias=True)["space"],
        "method": ctx.search.method,
        "metric": ctx.metric,
    }
    with studies.ask_lock(ctx.output_dir):
        stored = study.user_attrs.get("signature")
        if stored is None:
            study.set_user_attr("signature", signature)
        elif stored != signature:
            raise NluftError(
                f"{ctx.source}: search: {studies.journal_path(ctx.output_dir)} holds a study with "
                "another space, method or metric; set output_dir=NEW_DIR for a new search"
            )
    return study


def work(ctx: Search, study: Any) -> int:
    """Take trials until the budget is spent; 3 when stopped by a signal (resume by rerunning)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, ctx.request_stop)
    distributions = space.distributions(ctx.search)
    while not ctx.stop_requested:
        with contextlib.ExitStack() as stack:
            trial, running = next_trial(ctx, study, distributions, stack)
            if trial is None:
                if running == 0:
                    break
                time.sleep(POLL_S)  # others still run trials that may come back as retries
                continue
            outcome = run_trial(ctx, study, trial)
        if outcome == "stopped":
            ctx.stop_requested = True
    if ctx.stop_requested:
        print("search: stopped; rerun the same command to continue the study", flush=True)
        requeue_worker(ctx)
        return EXIT_STOPPED
    done = studies.counts(study)
    print(f"search: done: {done}", flush=True)
    return 0


def next_trial(
    ctx: Search, study: Any, distributions: dict[str, Any], stack: contextlib.ExitStack
) -> tuple[Any, int]:
    """Under the ask lock: retry lost trials, then take a waiting retry or a new trial."""
    with studies.ask_lock(ctx.output_dir):
        retried = studies.retry_stale_trials(study, ctx.output_dir, ctx.search)
        for number in retried:
            print(f"search: trial {number} lost its worker; enqueued a retry", flush=True)
        count = studies.counts(study)
        started = count.get("COMPLETE", 0) + count.get("PRUNED", 0) + count.get("FAIL", 0)
        running = count.get("RUNNING", 0)
        if not count.get("WAITING") and started + running >= ctx.budget:
            return None, running
        study.sampler = studies.build_sampler(ctx.search, len(study.get_trials(deepcopy=False)))
        trial = study.ask(distributions)
        stack.enter_context(studies.TrialHeartbeat(ctx.output_dir, trial.number))
        return trial, running


def trial_overrides(ctx: Search, trial: Any, run_dir: Path) -> dict[str, Any]:
    """The trial's parameters, its run directory, and its W&B group (the search) and name."""
    params = {key: trial.params[key] for key in ctx.search.space}
    wandb = ctx.cfg.tracking.wandb
    return {
        **params,
        "output_dir": str(run_dir),
        "tracking.wandb.group": wandb.group or f"search-{ctx.output_dir.resolve().name}",
        "tracking.wandb.name": run_dir.name,
    }


def follow(ctx: Search) -> int:
    """A rank other than 0: train each trial that rank 0 publishes, until it says stop."""
    from nluft.train import main as train_main

    assert ctx.channel is not None
    while True:
        draw = ctx.channel.receive()
        if "exit" in draw:
            return int(draw["exit"])
        cfg = validate(space.with_params(ctx.raw, draw["overrides"]), ctx.source)
        try:
            train_main(cfg, resume=draw["resume"], reporter=Reporter(None, ctx.metric))
        except Exception as err:  # rank 0 fails the trial in the study; go on with the next
            print(f"search: trial failed on this rank: {err}", flush=True)


def run_trial(ctx: Search, study: Any, trial: Any) -> str:
    """Train one trial and tell the study how it ended: complete, pruned, failed or stopped."""
    from optuna.trial import TrialState

    from nluft.train import main as train_main

    run_dir = ctx.output_dir / f"trial-{studies.root_number(study, trial):03d}"
    overrides = trial_overrides(ctx, trial, run_dir)
    cfg = validate(space.with_params(ctx.raw, overrides), ctx.source)
    resume = (run_dir / "config.yaml").is_file()
    if run_dir.is_dir() and not resume:
        shutil.rmtree(run_dir)  # stopped before its config was written: nothing to keep
    if ctx.channel is not None:
        ctx.channel.publish({"overrides": overrides, "resume": resume})
    trial.set_user_attr("run_dir", run_dir.name)
    shown = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    verb = "resuming" if resume else "starting"
    print(f"search: trial {trial.number}: {verb} {run_dir.name}: {shown}", flush=True)
    reporter = Reporter(trial, ctx.metric)
    try:
        results = train_main(cfg, resume=resume, reporter=reporter)
    except KeyboardInterrupt:
        studies.retry_now(study, trial, ctx.search)
        raise
    except Exception as err:  # a diverged or broken trial fails; the search goes on
        trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
        studies.tell(study, trial, state=TrialState.FAIL)
        print(f"search: trial {trial.number} failed: {err}", flush=True)
        return "failed"
    finally:
        for sig in STOP_SIGNALS:  # a signal during the final evaluation reached the run's flag
            handler = signal.getsignal(sig)
            if getattr(getattr(handler, "__self__", None), "requested", False):
                ctx.stop_requested = True
            signal.signal(sig, ctx.request_stop)
    return tell(ctx, study, trial, reporter, results)


def tell(ctx: Search, study: Any, trial: Any, reporter: Reporter, results: dict[str, Any]) -> str:
    from optuna.trial import TrialState

    if "stopped_at_step" in results:
        studies.retry_now(study, trial, ctx.search)
        print(
            f"search: trial {trial.number} stopped at step {results['stopped_at_step']}; "
            "its retry resumes from the checkpoint",
            flush=True,
        )
        return "stopped"
    if reporter.pruned:
        studies.tell(study, trial, state=TrialState.PRUNED)
        print(f"search: trial {trial.number} pruned", flush=True)
        return "pruned"
    value = results.get("validation", {}).get(ctx.metric)
    if value is None or not math.isfinite(value):
        trial.set_user_attr("error", f"no finite validation {ctx.metric} (needs a validation set)")
        studies.tell(study, trial, state=TrialState.FAIL)
        return "failed"
    studies.tell(study, trial, float(value))
    print(f"search: trial {trial.number}: validation {ctx.metric} {value:.4f}", flush=True)
    return "complete"


def requeue_worker(ctx: Search) -> None:
    """In a Slurm array task of `nluft submit --search`: requeue it once the study is updated."""
    if not ctx.requeue:
        return
    from nluft.distributed import read_dist_env
    from nluft.preemption import requeue_after_stop

    requeue_after_stop(dataclasses.replace(read_dist_env(), slurm_requeue=True))
