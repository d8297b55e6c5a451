"""Slurm batch scripts rendered from an nluft config, checked before anything is submitted.

`render_script` is a pure function (golden-file tests pin its output); `submit` writes the script
into the run directory and calls the real `sbatch`.

The script runs one srun task per node; each task runs `nluft launch` (torchrun's own runner)
with `procs_per_node` workers and a c10d rendezvous on the allocation's first host, on a port
derived from the job id (jobs that share a host never collide on 29500).

Preemption and wall time: Slurm sends USR1 to the batch shell `signal_seconds` early; the trap
sends USR1 to the job step (TERM would kill a W&B service, wandb-core, in the step); torchrun's
agents, told to handle USR1, pass it to the workers, whose handler only sets a flag. The training
and evaluation loops agree on it across ranks, checkpoint atomically and exit with code 3; each
node's `nluft launch` then says in one line at which step the run stopped and exits 3 too (no
traceback). Once every node has exited, the batch shell requeues the job (`scontrol requeue`; the
script exports NLUFT_REQUEUE=launcher so that rank 0 leaves it to the script, and
NLUFT_MAX_REQUEUES) unless the run finished or SLURM_RESTART_COUNT reached the maximum, which it
says. Requeueing only after the step has ended means nothing is killed while it writes. The
requeued job finds config.yaml in the run dir and resumes from that checkpoint by itself. The
script does not requeue after a crash (a deterministic error would only fail again, and Slurm
requeues a `--requeue` job whose node fails by itself).

Untrusted text never becomes shell code: every value in an `#SBATCH` line must be one printable
line (a newline would end the directive and start a shell line), and is quoted when it holds
spaces; the python path, workdir, config path and overrides are shell-quoted. Secrets stay out of
job.sbatch: a `--setup` line or override that holds one (nluft.redaction) is replaced by a
reference to an environment variable (`NLUFT_SECRET_*`) that `submit` hands to sbatch in its
environment, never on a command line; sbatch stores the job's environment with the job, so a
requeued job has it too.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from nluft.config import Config
from nluft.errors import NluftError
from nluft.redaction import has_secret

FINISHED_MARKER = "results/train.json"  # written by nluft only when training ran to its end
EXIT_STOPPED = 3  # every node stopped on request after checkpointing (nluft launch)
NODE_RANK = 'exec "$@" --node-rank="$SLURM_NODEID"'  # run by bash on each node


@dataclass(frozen=True)
class SubmitOptions:
    """What `nluft submit` takes besides the config; names follow sbatch's options."""

    nodes: int = 1
    gpus_per_node: int = 0
    procs_per_node: int = 1  # used when gpus_per_node is 0 (CPU ranks)
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    exclusive: bool = False
    dependency: str | None = None
    job_name: str | None = None
    signal_seconds: int = 120
    max_requeues: int = 3
    setup_lines: tuple[str, ...] = ()  # e.g. "module load cuda/12.4", "source .venv/bin/activate"
    python: str = "python"
    array_overrides: tuple[tuple[str, ...], ...] = ()  # one override set per array index
    extra_sbatch: tuple[str, ...] = field(default_factory=tuple)

    @property
    def nproc_per_node(self) -> int:
        return self.gpus_per_node or self.procs_per_node


def check_layout(cfg: Config, opts: SubmitOptions) -> int:
    """The world size this layout gives; errors name the option and the fix."""
    if opts.nodes < 1 or opts.nproc_per_node < 1:
        raise NluftError("--nodes and --gpus-per-node/--procs-per-node must be at least 1")
    world = opts.nodes * opts.nproc_per_node
    if cfg.strategy.name == "single" and world > 1:
        raise NluftError(
            f"strategy.name: 'single' runs one process but --nodes {opts.nodes} x "
            f"{opts.nproc_per_node} per node gives {world}; set strategy.name=ddp (or fsdp, "
            "deepspeed) or ask for one node and one process"
        )
    if cfg.train.per_device_eval_batch_size < 1:
        raise NluftError("train.per_device_eval_batch_size must be at least 1")
    if opts.signal_seconds < 10:
        raise NluftError("--signal-seconds: give training at least 10 s to checkpoint")
    if opts.max_requeues < 0:
        raise NluftError("--max-requeues must be 0 or more")
    return world


def header_value(key: str, value: object) -> str:
    """`value` as sbatch reads it from an `#SBATCH` line; refused when it could end that line."""
    text = str(value)
    if not text.isprintable() or '"' in text or "\\" in text:
        shown = repr(text)[1:-1]
        raise NluftError(
            f"{key}: '{shown}' cannot go into an #SBATCH line; use one line of printable "
            "characters without quotes or backslashes"
        )
    return f'"{text}"' if " " in text else text


def sbatch_lines(cfg: Config, opts: SubmitOptions, run_dir: Path) -> list[str]:
    array = bool(opts.array_overrides)
    log = run_dir / "slurm" / ("slurm-%A_%a.out" if array else "slurm-%j.out")
    output = header_value("output_dir", log)  # first: the default job name derives from it
    job_name = header_value("--job-name", opts.job_name or "nluft-" + run_dir.name)
    lines = [
        f"--job-name={job_name}",
        f"--nodes={opts.nodes}",
        "--ntasks-per-node=1",
        f"--output={output}",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{opts.signal_seconds}",
    ]
    if opts.gpus_per_node:
        lines.append(f"--gpus-per-node={opts.gpus_per_node}")
    for name in (
        "partition",
        "time",
        "account",
        "qos",
        "constraint",
        "mem",
        "cpus_per_task",
        "dependency",
    ):
        value = getattr(opts, name)
        if value is not None:
            flag = f"--{name.replace('_', '-')}"
            lines.append(f"{flag}={header_value(flag, value)}")
    if opts.exclusive:
        lines.append("--exclusive")
    if array:
        lines.append(f"--array=0-{len(opts.array_overrides) - 1}")
    lines.extend(header_value("#SBATCH line", extra) for extra in opts.extra_sbatch)
    return lines


def secret_env(overrides: list[str], opts: SubmitOptions) -> dict[str, str]:
    """Setup lines and overrides that hold a secret, by the variable that carries them to the job.

    `submit` passes these to sbatch in its environment; the script names only the variables.
    """
    env = {f"NLUFT_SECRET_SETUP_{i}": line for i, line in enumerate(opts.setup_lines)}
    env |= {f"NLUFT_SECRET_ARG_{i}": arg for i, arg in enumerate(overrides)}
    return {name: value for name, value in env.items() if has_secret(value)}


def setup_body(opts: SubmitOptions, secrets: dict[str, str]) -> list[str]:
    """The `--setup` lines; one that holds a secret runs from its environment variable."""
    lines = []
    for i, line in enumerate(opts.setup_lines):
        name = f"NLUFT_SECRET_SETUP_{i}"
        if name in secrets:
            lines += [
                f"# --setup line {i + 1} holds a secret: nluft submit passed it in the job's "
                "environment, not in this file",
                f'eval "${{{name}:?{SECRET_MISSING}}}"',
            ]
        else:
            lines.append(line)
    return lines


# Shown when sbatch did not pass the submitting environment on (e.g. SBATCH_EXPORT=NONE).
SECRET_MISSING = "set by nluft submit in the job environment; sbatch --export must include it"


def quoted_args(overrides: list[str], secrets: dict[str, str]) -> list[str]:
    """Overrides as shell words; one that holds a secret is read from its job variable."""
    return [
        f'"${{{name}:?{SECRET_MISSING}}}"' if name in secrets else shlex.quote(arg)
        for name, arg in ((f"NLUFT_SECRET_ARG_{i}", a) for i, a in enumerate(overrides))
    ]


def render_script(
    config_path: str, overrides: list[str], cfg: Config, opts: SubmitOptions, workdir: Path
) -> str:
    """The complete sbatch script for this config and layout."""
    check_layout(cfg, opts)
    run_dir = workdir / cfg.output_dir  # an absolute output_dir stays as it is
    array = bool(opts.array_overrides)
    run_ref = (
        f"{shlex.quote(str(run_dir))}/$SLURM_ARRAY_TASK_ID" if array else shlex.quote(str(run_dir))
    )
    header = ["#!/bin/bash", *(f"#SBATCH {line}" for line in sbatch_lines(cfg, opts, run_dir))]
    secrets = secret_env(overrides, opts)
    args = quoted_args(overrides, secrets)
    body = [
        "# Rendered by `nluft submit`; the job resumes itself after preemption or requeue.",
        "set -uo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        *setup_body(opts, secrets),
        f"RUN_DIR={run_ref}",
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "PORT=$((20000 + SLURM_JOB_ID % 20000))",
        "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 PYTHONUNBUFFERED=1",
        "# After a stop checkpoint this script requeues the job, at most this many times.",
        f"export NLUFT_REQUEUE=launcher NLUFT_MAX_REQUEUES={opts.max_requeues}",
        'RESUME=(); [ -f "$RUN_DIR/config.yaml" ] && RESUME=(--resume)',
    ]
    if array:
        sets = " ".join(shlex.quote(" ".join(s)) for s in opts.array_overrides)
        body += [f"SWEEP=({sets})", 'read -r -a SWEEP_ARGS <<< "${SWEEP[$SLURM_ARRAY_TASK_ID]}"']
    sweep = ' "${SWEEP_ARGS[@]}"' if array else ""
    # `nluft launch` on every node: torchrun's runner, and one line per node when stopped.
    train = " ".join(
        [
            shlex.quote(opts.python),
            "-m launch.cli launch",
            "--nnodes=$SLURM_NNODES",
            f"--nproc-per-node={opts.nproc_per_node}",
            "--rdzv-endpoint=$HEAD:$PORT",
            "--rdzv-id=$SLURM_JOB_ID",
            shlex.quote(config_path),
            *args,
        ]
    )
    body += [
        "# No --kill-on-bad-exit: a node that stopped (exit 3) must not kill one still writing.",
        "# A node that fails ends the others' collectives, or their rendezvous (timeout_s).",
        "# Each task adds its own node rank (SLURM_NODEID differs per node, not in this shell).",
        f"srun bash -c {shlex.quote(NODE_RANK)} node {train}{sweep} "
        '"output_dir=$RUN_DIR" "${RESUME[@]}" &',
        "PID=$!",
        "# Signal the step's processes (not srun: it would kill the step after KillWait). USR1,",
        "# not TERM: the W&B service (wandb-core) exits on TERM; torchrun agents pass USR1 on.",
        'STOP=\'echo "nluft: stop signal; checkpointing"; scancel -s USR1 "$SLURM_JOB_ID.0"\'',
        'trap "$STOP" USR1 TERM',
        "# wait returns early when the trap fires; keep waiting until training has exited",
        'while :; do wait "$PID"; RC=$?; kill -0 "$PID" 2>/dev/null || break; done',
        *requeue_lines(opts),
    ]
    return "\n".join([*header, "", *body]) + "\n"


def requeue_lines(opts: SubmitOptions) -> list[str]:
    """After every node has exited: finished, stopped (requeue once all is written), or failed."""
    limit = opts.max_requeues
    resubmit = "resubmit $RUN_DIR/slurm/job.sbatch to continue from the checkpoint"
    return [
        f'if [ -f "$RUN_DIR/{FINISHED_MARKER}" ]; then echo "nluft: run finished"; exit 0; fi',
        f'if [ "$RC" -ne {EXIT_STOPPED} ]; then',
        '    echo "nluft: training failed (exit $RC); see the first error above"; exit "$RC"',
        "fi",
        "trap '' USR1 TERM  # the requeue signals this shell too; nothing is left to stop",
        "DONE=${SLURM_RESTART_COUNT:-0}",
        f'if [ "$DONE" -ge {limit} ]; then',
        '    echo "nluft: not requeueing job $SLURM_JOB_ID: it was requeued $DONE times already'
        f' (--max-requeues {limit}); {resubmit}"',
        f"    exit {EXIT_STOPPED}",
        "fi",
        f'echo "nluft: requeueing job $SLURM_JOB_ID ($((DONE + 1)) of {limit}) to resume from'
        ' the checkpoint"',
        f'scontrol requeue "$SLURM_JOB_ID" || echo "nluft: scontrol requeue failed; {resubmit}"',
        f"exit {EXIT_STOPPED}",
    ]


def submit(script: str, cfg: Config, secrets: dict[str, str] | None = None) -> tuple[str, Path]:
    """Write the script into the run dir and call sbatch; return the job id and script path.

    `secrets` (from `secret_env`) reach sbatch in its environment, which it passes to the job.
    """
    slurm_dir = Path(cfg.output_dir) / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    path = slurm_dir / "job.sbatch"
    path.write_text(script)
    try:
        proc = subprocess.run(
            ["sbatch", "--parsable", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(secrets or {})},
        )
    except FileNotFoundError:
        raise NluftError("sbatch not found: run nluft submit on a Slurm login node") from None
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise NluftError(f"sbatch rejected {path}: {message[-1] if message else proc.returncode}")
    return proc.stdout.strip().split(";")[0], path


def render_search_script(
    config_path: str,
    overrides: list[str],
    cfg: Config,
    opts: SubmitOptions,
    workers: int,
    workdir: Path,
) -> str:
    """A `workers`-task array whose tasks run `nluft search` on one OUTPUT_DIR/study.journal.

    Each task takes trials until the study has its budget. On USR1/TERM (preemption, wall time)
    the worker checkpoints its trial, hands it back to the study (the retry resumes the checkpoint)
    and requeues its own task (`--requeue`); a task killed hard leaves a trial that the other
    workers retry once its heartbeat is older than `search.grace_s`.
    """
    if workers < 1:
        raise NluftError("--workers must be at least 1")
    if cfg.search is None:
        raise NluftError(f"{config_path}: --search needs a 'search' section in the config")
    if opts.nodes != 1 or opts.nproc_per_node != 1:
        raise NluftError("--search: each worker runs its trials in one process on one node")
    check_layout(cfg, opts)
    run_dir = workdir / cfg.output_dir
    array = SubmitOptions(**{**opts.__dict__, "array_overrides": ((),) * workers})
    header = ["#!/bin/bash", *(f"#SBATCH {line}" for line in sbatch_lines(cfg, array, run_dir))]
    secrets = secret_env(overrides, opts)
    search = " ".join(
        [
            shlex.quote(opts.python),
            "-m nluft search",
            shlex.quote(config_path),
            *quoted_args(overrides, secrets),
            "--requeue",
        ]
    )
    body = [
        "# Rendered by `nluft submit --search`: one search worker per array task, one study.",
        "set -uo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        *setup_body(opts, secrets),
        "export PYTHONUNBUFFERED=1",
        "# After a stop the worker hands its trial back to the study and requeues this task.",
        f"export NLUFT_MAX_REQUEUES={opts.max_requeues}",
        f"srun --kill-on-bad-exit=1 {search} &",
        "PID=$!",
        'STOP=\'echo "nluft: stop signal; checkpointing"; scancel -s USR1 "$SLURM_JOB_ID.0"\'',
        'trap "$STOP" USR1 TERM',
        'while :; do wait "$PID"; RC=$?; kill -0 "$PID" 2>/dev/null || break; done',
        'echo "nluft: search worker exited ($RC)"',
        'exit "$RC"',
    ]
    return "\n".join([*header, "", *body]) + "\n"
