"""`nluft launch`: torchrun's own runner with nluft's defaults, running `nluft train` per rank.

Defaults that matter on shared machines and clusters (see PLATFORM_NOTES):
- c10d rendezvous; on one node its endpoint is 127.0.0.1:0, so the OS picks a free port and two
  jobs on one machine never collide on 29500;
- TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: workers get their own store, which makes elastic
  restarts (`--max-restarts`) reliable;
- the config is validated before any process starts, so bad input exits 2 at once.

Only the standard library is imported at module level: `nluft --help` stays fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nluft.errors import NluftError
from nluft.redaction import redact_text

LOCAL_ENDPOINT = "127.0.0.1:0"  # port 0: the rendezvous store binds a free port
# Signals the agents pass on to the ranks (which checkpoint and exit 3); USR1 is Slurm's warning
# signal of choice and not among torchrun's defaults.
AGENT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
EXIT_STOPPED = 3  # every rank checkpointed and stopped on request; --resume continues


@dataclass(frozen=True)
class LaunchPlan:
    """Everything torchrun needs to know; `torchrun_args` turns it into its command line."""

    nproc_per_node: int
    nnodes: int
    node_rank: int
    rdzv_endpoint: str
    rdzv_id: str
    max_restarts: int
    timeout_s: float
    train_args: tuple[str, ...]


def add_parser(verbs: Any) -> None:
    """Add the `launch` verb to the `nluft` parser."""
    launch = verbs.add_parser(
        "launch",
        help="train on several processes/nodes with torchrun (strategy.name: ddp, ...)",
        description="Start `nluft train` on every rank through torchrun's own runner.",
    )
    launch.add_argument("config", help="YAML config (see configs/)")
    launch.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. strategy.name=ddp")
    launch.add_argument("--nproc-per-node", type=int, default=1, help="ranks on this node")
    launch.add_argument("--nnodes", type=int, default=1, help="number of nodes (torchrun agents)")
    launch.add_argument(
        "--node-rank", type=int, default=0, help="this node's rank; node 0 hosts the rendezvous"
    )
    launch.add_argument(
        "--rdzv-endpoint", help="HOST:PORT on node 0, the same on every node (multi-node)"
    )
    launch.add_argument("--rdzv-id", help="job id shared by all nodes (default: from output_dir)")
    launch.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="restart all ranks up to K times after a failure, resuming from the last checkpoint",
    )
    launch.add_argument("--resume", action="store_true", help="continue output_dir's run")
    launch.add_argument("--overwrite", action="store_true", help="delete output_dir first")


def build_plan(args: argparse.Namespace, output_dir: str, timeout_s: float) -> LaunchPlan:
    """Check the launcher flags against each other; fill in the endpoint and job id."""
    if args.nproc_per_node < 1:
        raise NluftError(f"--nproc-per-node: must be at least 1 (got {args.nproc_per_node})")
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise NluftError(f"--node-rank: must be in 0..{args.nnodes - 1} for --nnodes {args.nnodes}")
    if args.max_restarts < 0:
        raise NluftError(f"--max-restarts: must be 0 or more (got {args.max_restarts})")
    if args.max_restarts and args.overwrite:
        raise NluftError(
            "--overwrite: with --max-restarts every restart would delete the run; "
            "delete output_dir yourself or choose a new one"
        )
    endpoint = args.rdzv_endpoint
    if endpoint is None:
        if args.nnodes > 1:
            raise NluftError(
                f"--rdzv-endpoint: needed with --nnodes {args.nnodes} "
                "(HOST:PORT reachable on node 0, the same on every node)"
            )
        endpoint = LOCAL_ENDPOINT
    check_endpoint(endpoint)
    # Every node must agree on the id without talking: derive it from what they share.
    rdzv_id = args.rdzv_id or (
        "nluft-" + hashlib.sha256(f"{endpoint} {output_dir}".encode()).hexdigest()[:12]
        if args.nnodes > 1
        else uuid.uuid4().hex
    )
    # A restarted rank must continue from the last checkpoint, not refuse the existing run dir.
    resume = args.resume or args.max_restarts > 0
    train_args = (
        args.config,
        *args.overrides,
        *(["--resume"] if resume else []),
        *(["--overwrite"] if args.overwrite else []),
    )
    return LaunchPlan(
        args.nproc_per_node,
        args.nnodes,
        args.node_rank,
        endpoint,
        rdzv_id,
        args.max_restarts,
        timeout_s,
        train_args,
    )


def check_endpoint(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise NluftError(
            f"--rdzv-endpoint: expected HOST:PORT, e.g. node0:29400 (got {endpoint!r})"
        )


def torchrun_args(plan: LaunchPlan) -> list[str]:
    """torchrun's command line for the plan (a pure function; tests compare it to a golden list)."""
    is_host = int(plan.node_rank == 0)
    return [
        f"--nnodes={plan.nnodes}",
        f"--nproc-per-node={plan.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={plan.rdzv_endpoint}",
        f"--rdzv-id={plan.rdzv_id}",
        # Node 0 hosts the rendezvous store, explicitly: hostname matching is ambiguous when
        # several agents share a host.
        f"--rdzv-conf=join_timeout={int(plan.timeout_s)},is_host={is_host}",
        f"--max-restarts={plan.max_restarts}",
        f"--signals-to-handle={AGENT_SIGNALS}",
        "--module",
        "nluft",
        "train",
        *plan.train_args,
    ]


def check_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """The same refusal as `nluft train`, before any process starts."""
    run_dir = Path(output_dir)
    if resume and overwrite:
        raise NluftError("--resume and --overwrite contradict each other; pass one")
    # `nluft submit` puts the job script and Slurm logs in RUN_DIR/slurm before training starts.
    holds = run_dir.is_dir() and any(p.name != "slurm" for p in run_dir.iterdir())
    if holds and not (resume or overwrite):
        raise NluftError(
            f"output_dir: {run_dir} already holds a run; pass --resume to continue it, "
            "--overwrite to replace it, or set output_dir=NEW_DIR"
        )


def run_launch(args: argparse.Namespace) -> int:
    """Validate, then hand over to torchrun's runner; the exit code says how the ranks ended."""
    from nluft.config import load_config

    cfg = load_config(args.config, args.overrides)
    check_output_dir(cfg.output_dir, args.resume, args.overwrite)
    plan = build_plan(args, cfg.output_dir, cfg.strategy.timeout_s)
    argv = torchrun_args(plan)
    shown = redact_text(shlex.join(argv))
    print(f"nluft launch: torchrun {shown}", file=sys.stderr, flush=True)
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    started = time.time()
    try:
        torchrun.run(torchrun.parse_args(argv))
    except ChildFailedError as err:
        codes = {failure.exitcode for failure in err.failures.values()}
        if codes == {EXIT_STOPPED}:
            return stopped(args, cfg.output_dir, started, None)
        if codes == {2}:  # bad input: every rank said which in one line
            return 2
        exitcodes = {rank: failure.exitcode for rank, failure in err.failures.items()}
        print(failure_message(exitcodes, args), file=sys.stderr)
        return 1
    except SignalException as err:
        # The agent passed the signal on and waited for the ranks; they checkpoint and exit 3.
        return stopped(args, cfg.output_dir, started, signal.Signals(err.sigval))
    return 0


def stopped(
    args: argparse.Namespace, output_dir: str, started: float, sig: signal.Signals | None
) -> int:
    """One line for this node: where the run stopped and what continues it; the exit code."""
    for other in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(other, signal.SIG_IGN)  # a second signal (a requeue) must not cut it short
    node = f"nluft launch: node {args.node_rank}"
    step = stop_step(Path(output_dir), started)
    if step is None and sig is not None:  # no stop recorded: the signal ended the ranks first
        print(f"{node}: stopped by {sig.name} before the run checkpointed", file=sys.stderr)
        return 128 + int(sig)
    where = f" at step {step}" if step is not None else ""  # else: every rank exited 3
    if os.environ.get("NLUFT_REQUEUE"):  # a job of `nluft submit`: its script requeues it
        print(f"{node}: run stopped{where} for a requeue", file=sys.stderr)
    else:
        print(
            f"{node}: run stopped{where} on request (checkpoint written); continue "
            f"with: {resume_command(args)}",
            file=sys.stderr,
        )
    return EXIT_STOPPED


def stop_step(run_dir: Path, since: float) -> int | None:
    """The step of the last stop the ranks recorded in metrics.jsonl since `since`, if any."""
    path = run_dir / "metrics.jsonl"
    step = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
            if record.get("event") == "stopped" and float(record["time"]) >= since - 1:
                step = int(record["step"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line cut short by a hard kill
    return step


def failure_message(exitcodes: dict[int, int], args: argparse.Namespace) -> str:
    """One line: which ranks failed how, the restarts used up, and the command that continues."""
    # Ranks torchrun itself stopped (SIGTERM) once another had failed are not the cause.
    causes = {r: c for r, c in exitcodes.items() if c != -signal.SIGTERM} or exitcodes
    what = ", ".join(describe_exit(rank, code) for rank, code in sorted(causes.items()))
    # torchrun gives up only once every restart is spent: each attempt ended in a failure.
    tries = (
        f"the workers failed {args.max_restarts + 1} times; giving up after "
        f"--max-restarts {args.max_restarts}"
        if args.max_restarts
        else "not restarted (--max-restarts 0)"
    )
    return (
        f"nluft launch: {what}; {tries}; continue from the latest checkpoint with: "
        f"{resume_command(args)}"
    )


def describe_exit(rank: int, exitcode: int) -> str:
    """'rank 1 died (SIGKILL)' for a signal (torchrun reports it as a negative code)."""
    if exitcode >= 0:
        return f"rank {rank} exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f"rank {rank} died ({name})"


def resume_command(args: argparse.Namespace) -> str:
    """The `nluft launch` command line that continues this run (flags as given, plus --resume)."""
    flags = [
        ("--nproc-per-node", args.nproc_per_node, 1),
        ("--nnodes", args.nnodes, 1),
        ("--node-rank", args.node_rank, 0),
        ("--rdzv-endpoint", args.rdzv_endpoint, None),
        ("--rdzv-id", args.rdzv_id, None),
        ("--max-restarts", args.max_restarts, 0),
    ]
    given = [
        item for flag, value, default in flags if value != default for item in (flag, str(value))
    ]
    command = shlex.join(["nluft", "launch", *given, args.config, *args.overrides, "--resume"])
    return redact_text(command)  # printed into logs: a secret override shows as <redacted>
