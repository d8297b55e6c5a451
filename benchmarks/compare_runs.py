"""Is run set A more accurate than run set B on the same test split, beyond the noise?

    .venv/bin/python benchmarks/compare_runs.py runs/kdhn-s{1,2,3} --against runs/plain-s{1,2,3}

Each run is a finished run directory (results/test_predictions.jsonl, written by `nluft train` /
`nluft distill` / `nluft eval`; --predictions picks another file, e.g. an int8 export's); the
i-th run of A is paired with the i-th of B (same seed). Accuracy differences between two models
on one test split sit inside two noises: the seed (dropout, batch order) and the test sample
itself (a binomial standard error of about 1.1 points at 84 % on 1,057 sentences). Printed, per
pair and for the mean over pairs:
- the accuracy difference A - B in points, and how many test sentences only A / only B got right;
- per pair, McNemar's exact test (a two-sided binomial test on those discordant sentences);
- for the mean, a 95 % percentile interval from a paired bootstrap that resamples the test
  sentences and the seed pairs together (--samples draws): it excludes 0 when the gain holds
  against both noises at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binomtest


def correct(run: Path, predictions: str) -> dict[int, bool]:
    """Test row -> whether the run predicted it right."""
    path = run / predictions
    if not path.is_file():
        sys.exit(f"compare_runs: {path} is missing: give finished run directories")
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["row"]: r["gold"] == r["predicted"] for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run set A")
    parser.add_argument("--against", nargs="+", type=Path, required=True, help="run set B")
    parser.add_argument(
        "--predictions",
        default="results/test_predictions.jsonl",
        help="file in each run (results/export-int8/test_predictions.jsonl: the int8 export's, "
        "as `nluft eval RUN --export RUN/export-int8` saves them)",
    )
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.runs) != len(args.against):
        sys.exit(f"compare_runs: {len(args.runs)} runs against {len(args.against)}: pair them")
    pairs = []
    for a, b in zip(args.runs, args.against, strict=True):
        ca, cb = correct(a, args.predictions), correct(b, args.predictions)
        if ca.keys() != cb.keys():
            sys.exit(f"compare_runs: {a} and {b} were tested on different rows")
        rows = sorted(ca)
        pairs.append(([ca[r] for r in rows], [cb[r] for r in rows]))
        only_a = sum(x and not y for x, y in zip(pairs[-1][0], pairs[-1][1], strict=True))
        only_b = sum(y and not x for x, y in zip(pairs[-1][0], pairs[-1][1], strict=True))
        diff = 100 * (only_a - only_b) / len(rows)
        p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        print(
            f"{a} vs {b}: {diff:+.2f} points (only A right {only_a}, only B {only_b}; "
            f"McNemar exact p={p:.3f})"
        )
    # per pair and test row: +1 A alone right, -1 B alone right, 0 both or neither
    deltas = np.array([a for a, _ in pairs], dtype=np.int8) - np.array([b for _, b in pairs])
    npairs, n = deltas.shape
    mean = 100 * deltas.mean()
    rng = np.random.default_rng(args.seed)
    draws = np.empty(args.samples)
    for i in range(args.samples):
        seeds = rng.integers(npairs, size=npairs)
        rows = rng.integers(n, size=n)
        draws[i] = 100 * deltas[seeds][:, rows].mean()
    lo, hi = np.percentile(draws, [2.5, 97.5])
    print(
        f"mean over {len(pairs)} pairs: {mean:+.2f} points, 95 % bootstrap interval "
        f"[{lo:+.2f}, {hi:+.2f}] (test rows and seed pairs resampled, {args.samples} draws)"
    )


if __name__ == "__main__":
    main()
