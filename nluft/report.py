"""`nluft report RUN_DIR`: the metrics table of a run and a PNG of its loss and metric curves.

Reads only local files (metrics.jsonl, results/, the newest checkpoint's trainer_state.json), so
it works on any run, with or without W&B, while it trains or after it stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nluft.errors import NluftError

# Mirrors nluft/checkpoint.py's layout without importing it (that would pull in torch).
TRAINER_STATE_GLOB = "checkpoints/step-*/trainer_state.json"
MAX_METRIC_CURVES = 6


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, one record per (kind, step) (the last wins after a replay), by step."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise NluftError(f"{run_dir}: no metrics.jsonl; not an nluft run directory")
    latest: dict[tuple[str, int, str], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a hard kill
        latest[(record["kind"], record["step"], str(record.get("event", "")))] = record
    return sorted(latest.values(), key=lambda r: r["step"])


def read_results(run_dir: Path) -> dict[str, dict[str, float]]:
    """Final metrics per split from results/<split>.json (validation first)."""
    results = {}
    for path in sorted((run_dir / "results").glob("*.json"), key=lambda p: p.stem != "validation"):
        # results/train.json holds whole-run throughput, not metrics of a train split.
        if not path.stem.endswith("_confusion_matrix") and path.stem != "train":
            results[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return results


def best_state(run_dir: Path) -> dict[str, Any] | None:
    """best_step and best_metric as training tracked them, from the newest checkpoint."""
    states = sorted(run_dir.glob(TRAINER_STATE_GLOB))
    return json.loads(states[-1].read_text(encoding="utf-8")) if states else None


def metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """One line per metric, one column per split (readable with many per-type metrics)."""
    keys = list(dict.fromkeys(k for metrics in rows.values() for k in metrics))
    width = max(len(k) for k in [*keys, "metric"])
    cols = [max(10, len(split)) for split in rows]
    header = "metric".ljust(width) + "".join(
        s.rjust(c + 2) for s, c in zip(rows, cols, strict=True)
    )
    lines = [header, "-" * len(header)]
    for key in keys:
        cells = [fmt(m.get(key)).rjust(c + 2) for m, c in zip(rows.values(), cols, strict=True)]
        lines.append(key.ljust(width) + "".join(cells))
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Counts (support) read as integers; rates and losses with 4 decimals.
        return f"{value:.0f}" if float(value).is_integer() and abs(value) > 1 else f"{value:.4f}"
    return "-" if value is None else str(value)


def series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    points = [
        (r["step"], float(r[key]))
        for r in records
        if r["kind"] == kind and isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    return [s for s, _ in points], [v for _, v in points]


def curve_names(records: list[dict[str, Any]]) -> list[str]:
    """Validation metrics worth a curve: aggregates (no per-class `a/b` keys), no counts."""
    keys = dict.fromkeys(k for r in records if r["kind"] == "eval/validation" for k in r)
    skip = ("step", "kind", "time", "loss")
    names = [k for k in keys if k not in skip and "/" not in k and "support" not in k]
    return names[:MAX_METRIC_CURVES]


def write_plot(records: list[dict[str, Any]], best_step: int | None, title: str, out: Path) -> None:
    """Loss, validation metrics, learning rate and throughput against the optimizer step."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a cluster node
        import matplotlib.pyplot as plt
    except ImportError:
        raise NluftError(
            "nluft report: matplotlib is not installed; pip install matplotlib"
        ) from None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    loss, metrics, lr, speed = axes.flat
    loss.plot(*series(records, "train", "loss"), label="train", linewidth=1)
    loss.plot(*series(records, "eval/validation", "loss"), "o-", label="validation")
    names = curve_names(records)
    for name in names:
        metrics.plot(*series(records, "eval/validation", name), "o-", label=name)
    lr.plot(*series(records, "train", "learning_rate"))
    speed.plot(*series(records, "train", "examples_per_s"))
    panels = zip(
        axes.flat,
        ("loss", "validation metrics", "learning rate", "examples/s"),
        strict=True,
    )
    for ax, name in panels:
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if best_step is not None and name in ("loss", "validation metrics"):
            ax.axvline(best_step, color="grey", linestyle="--", linewidth=1, label="best step")
        if ax.get_legend_handles_labels()[0] and name in ("loss", "validation metrics"):
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def report(run_dir: Path, out: Path | None = None) -> str:
    """The report text (also printed by the CLI); writes the PNG to `out` (RUN_DIR/report.png)."""
    records = read_records(run_dir)
    results = read_results(run_dir)
    state = best_state(run_dir) or {}
    best_step = state.get("best_step")
    lines = [f"run: {run_dir}", f"last step: {records[-1]['step'] if records else 0}", ""]
    if results:
        lines += ["final metrics", metrics_table(results), ""]
    else:
        lines += ["no final results yet (the run is still training or was stopped)", ""]
    speed = run_dir / "results" / "train.json"
    if speed.is_file():
        items = json.loads(speed.read_text(encoding="utf-8")).items()
        lines += ["training: " + ", ".join(f"{k} {fmt(v)}" for k, v in items), ""]
    evals = {r["step"]: r for r in records if r["kind"] == "eval/validation"}
    if best_step is not None and best_step in evals:
        lines.append(
            f"best validation step: {best_step} (best metric {fmt(state.get('best_metric'))})"
        )
        best = {k: v for k, v in evals[best_step].items() if k not in ("step", "kind", "time")}
        lines += [metrics_table({f"step {best_step}": best}), ""]
    elif evals:
        lines += [f"no best step recorded; last validation at step {max(evals)}", ""]
    out = out or run_dir / "report.png"
    write_plot(records, best_step, str(run_dir.resolve().name), out)
    lines.append(f"plot: {out}")
    return "\n".join(lines)


def sweep_summary(sweep_dir: Path, metric: str | None = None) -> str:
    """Rank the runs under `sweep_dir` (e.g. one per Slurm array index) by a validation metric."""
    from nluft.config import load_config
    from nluft.tasks import build_task

    runs = sorted(p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file())
    if not runs:
        raise NluftError(f"{sweep_dir}: no run directories (with config.yaml) inside")
    configs = {
        run: flatten(load_config(run / "config.yaml").model_dump(mode="json")) for run in runs
    }
    first = load_config(runs[0] / "config.yaml")
    name = metric or first.train.metric_for_best_model or build_task(first).default_metric
    greater = (
        name != "loss" if first.train.greater_is_better is None else first.train.greater_is_better
    )
    varying = sorted(
        k
        for k in configs[runs[0]]
        if k != "output_dir" and len({str(c.get(k)) for c in configs.values()}) > 1
    )
    rows = []
    for run in runs:
        results = read_results(run)
        value = results.get("validation", {}).get(name)
        test = results.get("test", {}).get(name)
        setting = " ".join(f"{k}={configs[run].get(k)}" for k in varying)
        rows.append((value, test, run.name, setting))
    done = sorted(
        (r for r in rows if r[0] is not None), key=lambda r: float(r[0] or 0), reverse=greater
    )
    lines = [
        f"sweep: {sweep_dir}  ranked by validation {name} "
        f"({'higher' if greater else 'lower'} is better)",
        f"{'rank':>4}  {'run':<12}{'validation':>12}{'test':>10}  settings",
    ]
    for i, (value, test, run_name, setting) in enumerate(done, start=1):
        lines.append(f"{i:>4}  {run_name:<12}{fmt(value):>12}{fmt(test):>10}  {setting}")
    for value, _, run_name, setting in rows:
        if value is None:
            lines.append(f"{'-':>4}  {run_name:<12}{'unfinished':>12}{'':>10}  {setting}")
    return "\n".join(lines)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
