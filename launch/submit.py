"""`nluft submit`: the same config as a Slurm job, checked before anything reaches sbatch."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from nluft.errors import NluftError


def add_parser(verbs: Any) -> None:
    """Add the `submit` verb to the `nluft` parser."""
    p = verbs.add_parser(
        "submit",
        help="submit CONFIG as a Slurm job (preemption-safe: checkpoints, requeues, resumes)",
        description="Render an sbatch script from CONFIG and the layout, check it, call sbatch.",
    )
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. strategy.name=ddp")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="ranks per node on GPUs")
    p.add_argument("--procs-per-node", type=int, default=1, help="CPU ranks per node (no GPUs)")
    for name in ("partition", "time", "account", "qos", "constraint", "mem", "dependency"):
        p.add_argument(f"--{name}")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--exclusive", action="store_true")
    p.add_argument("--job-name")
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="job array: one task per value (several --sweep: every combination)",
    )
    p.add_argument("--signal-seconds", type=int, default=120, help="warning before the time limit")
    p.add_argument("--max-requeues", type=int, default=3)
    p.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run before training, e.g. 'module load cuda/12.4'",
    )
    p.add_argument("--python", default=sys.executable, help="python on the compute nodes")
    p.add_argument("--dry-run", action="store_true", help="print the script; submit nothing")
    add_search_options(p)


def add_search_options(p: Any) -> None:
    p.add_argument(
        "--search",
        action="store_true",
        help="hyperparameter search: an array of workers sharing OUTPUT_DIR/study.journal",
    )
    p.add_argument("--workers", type=int, default=2, help="--search: array tasks (default 2)")


def sweep_sets(specs: list[str]) -> tuple[tuple[str, ...], ...]:
    """`KEY=V1,V2` specs -> one override tuple per combination (array index order)."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise NluftError(f"--sweep {spec!r}: expected KEY=V1,V2,... e.g. train.seed=1,2,3")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return tuple(itertools.product(*axes)) if axes else ()


def run_submit(args: argparse.Namespace) -> int:
    from launch.slurm import SubmitOptions, render_script, secret_env, submit
    from nluft.config import load_config

    cfg = load_config(args.config, args.overrides)
    opts = SubmitOptions(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        procs_per_node=args.procs_per_node,
        partition=args.partition,
        time=args.time,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
        mem=args.mem,
        cpus_per_task=args.cpus_per_task,
        exclusive=args.exclusive,
        dependency=args.dependency,
        job_name=args.job_name,
        signal_seconds=args.signal_seconds,
        max_requeues=args.max_requeues,
        setup_lines=tuple(args.setup),
        python=args.python,
        array_overrides=sweep_sets(args.sweep),
    )
    if args.search:
        return submit_search(args, cfg, opts)
    script = render_script(args.config, args.overrides, cfg, opts, Path.cwd())
    if args.dry_run:
        print(script, end="")
        return 0
    if not opts.array_overrides:
        from nluft.checkpoint import check_run_dir  # imports torch: not for a dry run

        check_run_dir(cfg, resume=False, overwrite=False)
    job, path = submit(script, cfg, secret_env(args.overrides, opts))
    log = (
        Path(cfg.output_dir)
        / "slurm"
        / (f"slurm-{job}_*.out" if opts.array_overrides else f"slurm-{job}.out")
    )
    print(f"submitted job {job}\nscript: {path}\nlog: {log}")
    return 0


def submit_search(args: argparse.Namespace, cfg: Any, opts: Any) -> int:
    """`nluft submit --search`: the search's space is checked here, before sbatch."""
    from launch.slurm import render_search_script, secret_env, submit
    from nluft.search.runner import load_search

    if opts.array_overrides:
        raise NluftError("--search and --sweep exclude each other; put the grid in search.space")
    load_search(args.config, args.overrides)  # a bad space fails now, not in every task
    script = render_search_script(args.config, args.overrides, cfg, opts, args.workers, Path.cwd())
    if args.dry_run:
        print(script, end="")
        return 0
    job, path = submit(script, cfg, secret_env(args.overrides, opts))
    log = Path(cfg.output_dir) / "slurm" / f"slurm-{job}_*.out"
    print(f"submitted job {job}\nscript: {path}\nlog: {log}")
    return 0
