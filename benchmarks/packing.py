"""Packed (`data.packing: true`) against padded batches: same model, data, batch and steps.

    .venv/bin/python benchmarks/packing.py --repeat 3 --markdown packing.md

Tasks: `sentiment` (configs/sentiment.yaml, MiniLM on Rotten Tomatoes, batch 32) and `ner`
(configs/ner_wnut16.yaml, WNUT-16, batch 8). Cases per task, one process each:
    padded          the config as shipped (dynamic padding, length-grouped batches)
    packed          the same with data.packing=true
    padded-random   dynamic padding without length grouping (data.group_by_length=false)
    packed-random   packing without length grouping
Rounds interleave the cases (A B C D A B C D ...) so a slow minute of the shared machine hits
each alike; the tables give the median and min-max over rounds of each figure and of each
ratio to `padded` (round i against round i). Throughput is measured by benchmarks/worker.py's
probes from the end of the first optimizer step to the end of the last; real tokens are the
non-pad ids the word embeddings see (a packed row has no padding: its efficiency reads 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_hf_trainer import Result, load_average, spread, summarize

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("worker.py")
TASKS = {"sentiment": ("configs/sentiment.yaml", 32), "ner": ("configs/ner_wnut16.yaml", 8)}
CASES = {
    "padded": {},
    "packed": {"packing": True},
    "padded-random": {"group_by_length": False},
    "packed-random": {"packing": True, "group_by_length": False},
}


def case_config(args: argparse.Namespace, task: str, case: str) -> Path:
    """The task's config with the case's data settings, written under --work."""
    path, _ = TASKS[task]
    cfg = yaml.safe_load((ROOT / path).read_text())
    cfg["data"].update(CASES[case])
    out = args.work / f"{task}-{case}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg))
    return out


def run_case(args: argparse.Namespace, task: str, case: str, round_: int) -> Result:
    out = args.work / task / case / f"round-{round_}"
    shutil.rmtree(out, ignore_errors=True)
    batch = TASKS[task][1]
    cmd = [sys.executable, str(WORKER), "--framework", "nluft", "--steps", str(args.steps)]
    cmd += ["--batch", str(batch), "--config", str(case_config(args, task, case))]
    cmd += ["--out", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    print(f"# {task} {case} round {round_}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=args.timeout)
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    return summarize(case, 1, batch, ranks)


def table(task: str, rounds: list[dict[str, Result]]) -> str:
    lines = [
        f"**{task}**",
        "",
        "| case | train ex/s | real tok/s | padding eff. | ex/s vs padded | tok/s vs padded |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in rounds[0]:
        rs = [r[case] for r in rounds]
        ratio = [r[case].examples_per_s / r["padded"].examples_per_s for r in rounds]
        tok_ratio = [r[case].tokens_per_s / r["padded"].tokens_per_s for r in rounds]
        lines.append(
            f"| {case} | {spread([r.examples_per_s for r in rs], '.1f')} | "
            f"{spread([r.tokens_per_s for r in rs], '.0f')} | "
            f"{spread([r.padding_efficiency for r in rs], '.3f')} | "
            f"{spread(ratio, '.2f', 'x')} | {spread(tok_ratio, '.2f', 'x')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per case")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-packing")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per case")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args()
    if "padded" not in args.cases:
        args.cases.insert(0, "padded")  # the reference of every ratio
    before = load_average()
    reports = []
    for task in args.tasks:
        rounds = [
            {case: run_case(args, task, case, i) for case in args.cases} for i in range(args.repeat)
        ]
        reports.append(table(task, rounds))
    report = "\n\n".join(reports)
    report += f"\n\n{args.repeat} interleaved round(s) of {args.steps} steps, 1 process; "
    report += f"load average (1/5/15 min) before: {before}, after: {load_average()}\n"
    print(report)
    if args.markdown:
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
