"""The C allocator under a CPU training step: page faults and step time, process against process.

    .venv/bin/python benchmarks/cpu_allocator.py --rounds 3 --steps 14

A CPU step frees and re-allocates the same activations and gradients every step; glibc maps a
fresh region for each allocation above its mmap threshold (MiniLM's 47 MB word-embedding gradient
is always above it) and trims the heap's top, so each step faults its buffers in again. Every case
is one process running benchmarks/options_ab.py's default step (main job's model and batches,
fused AdamW) under one allocator setting:
    glibc           the default
    glibc-nommap    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2 GiB (all from the heap, kept)
    tcmalloc        LD_PRELOAD=libtcmalloc_minimal.so.4 (apt: libtcmalloc-minimal4), if present
    jemalloc        LD_PRELOAD=libjemalloc.so.2 (apt: libjemalloc2) with decay off, if present
Cases run in interleaved rounds (each round in another order); per case the median over rounds of
its median step time and its page faults per step, and the median and min-max of the per-round
ratio to glibc. The allocator is a process setting (LD_PRELOAD, environment), not nluft's: the
results say what a user gains by starting nluft under one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

LIB = Path("/usr/lib/x86_64-linux-gnu")
CASES = {
    "glibc": {},
    "glibc-nommap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
    "tcmalloc": {"LD_PRELOAD": str(LIB / "libtcmalloc_minimal.so.4")},
    "jemalloc": {
        "LD_PRELOAD": str(LIB / "libjemalloc.so.2"),
        "MALLOC_CONF": "oversize_threshold:0,background_thread:true,dirty_decay_ms:-1,"
        "muzzy_decay_ms:-1",
    },
}


def child(config: str, steps: int, warmup: int) -> None:
    """One process: `steps` default steps; prints step times and page faults after warm-up."""
    sys.path.insert(0, str(Path(__file__).parent))
    from options_ab import VARIANTS, build_step, main_job_batches

    setup, batches, pad_id = main_job_batches(config, steps)
    step = build_step(setup, VARIANTS["default"], pad_id)
    times, faults = [], []
    for i, columns in enumerate(batches):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step(columns)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(json.dumps({"times": times, "faults": faults}))


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sentiment.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=14, help="steps per process")
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of each process")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.config, args.steps, args.warmup)
    wanted = dict.fromkeys(["glibc", *args.cases])  # the baseline of every ratio
    cases = [c for c in wanted if Path(CASES[c].get("LD_PRELOAD", "/")).exists()]
    skipped = sorted(set(wanted) - set(cases))
    before = os.getloadavg()
    step_s: dict[str, list[float]] = {c: [] for c in cases}
    faults: dict[str, list[float]] = {c: [] for c in cases}
    for r in range(args.rounds):
        for case in cases[r % len(cases) :] + cases[: r % len(cases)]:
            cmd = [sys.executable, __file__, "--child", "--config", args.config]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            env = {**os.environ, **CASES[case], "TOKENIZERS_PARALLELISM": "false"}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            step_s[case].append(statistics.median(result["times"]))
            faults[case].append(statistics.median(result["faults"]))
            print(f"# round {r + 1} {case}: {step_s[case][-1] * 1000:.0f} ms/step", flush=True)
    print("\n| allocator | ms per step | page faults per step | step time / glibc |")
    print("|---|---:|---:|---:|")
    for case in cases:
        ratio = [c / g for c, g in zip(step_s[case], step_s["glibc"], strict=True)]
        ms = [s * 1000 for s in step_s[case]]
        print(
            f"| {case} | {spread(ms, '.0f')} | {spread(faults[case], '.0f')} | "
            f"{spread(ratio, '.3f')}x |"
        )
    print(
        f"\n{args.rounds} interleaved rounds x {args.steps} steps ({args.warmup} warm-up) per "
        f"process; load average before {before}, after {os.getloadavg()}"
        + (f"; not installed: {', '.join(skipped)}" if skipped else "")
    )


if __name__ == "__main__":
    main()
