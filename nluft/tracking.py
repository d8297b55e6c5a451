"""Where metrics go: a rank-0 progress bar, console lines and `metrics.jsonl` in the run dir."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class Tracker:
    """Every method is safe to call on every rank; only rank 0 writes or prints."""

    def __init__(self, run_dir: Path, is_main: bool, progress_bar: bool) -> None:
        self.is_main = is_main
        self.progress_bar = progress_bar and is_main
        self.bar: tqdm[Any] | None = None
        self.file = (run_dir / "metrics.jsonl").open("a", encoding="utf-8") if is_main else None

    def start(self, total_steps: int, done_steps: int) -> None:
        if self.progress_bar:
            self.bar = tqdm(
                total=total_steps,
                initial=done_steps,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=1.0,
            )

    def advance(self, step: int, loss: float, examples_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{examples_per_s:.1f}", refresh=False)

    def log(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (`kind`: train, eval/<split>, event)."""
        if self.file is None:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **metrics}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def info(self, message: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        if self.file is not None:
            self.file.close()
            self.file = None


def format_table(rows: dict[str, dict[str, float]], keys: list[str]) -> str:
    """A plain-text table: one row per split, one column per metric."""
    width = max([len(k) for k in keys] + [8])
    header = "split".ljust(12) + "".join(k.rjust(width + 2) for k in keys)
    lines = [header, "-" * len(header)]
    for split, metrics in rows.items():
        cells = "".join(f"{metrics.get(k, float('nan')):.4f}".rjust(width + 2) for k in keys)
        lines.append(split.ljust(12) + cells)
    return "\n".join(lines)
