"""What a search found: the ranked trial table (`nluft sweep-summary`) and Optuna's plots
(`nluft report`), read from OUTPUT_DIR/study.journal and the trials' run directories."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nluft.errors import NluftError
from nluft.search import study as studies

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


@dataclass(frozen=True)
class TrialRow:
    """The latest attempt of one trial and its run directory's facts."""

    number: int
    run_dir: str
    state: str
    value: float | None
    params: dict[str, Any]
    steps: int | None
    planned_steps: int | None
    test: float | None


def load_study(output_dir: Path) -> Any:
    import optuna

    if not studies.journal_path(output_dir).is_file():
        raise NluftError(f"{output_dir}: no study.journal; not the output_dir of `nluft search`")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(
        study_name=studies.STUDY_NAME, storage=studies.build_storage(output_dir)
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def trial_rows(output_dir: Path, study: Any) -> list[TrialRow]:
    """One row per run directory: its latest attempt (a retried trial appears once)."""
    metric = study.user_attrs.get("signature", {}).get("metric")
    latest: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        name = trial.user_attrs.get("run_dir") or f"trial-{trial.number:03d}"
        latest[name] = trial  # trials come in number order: a retry replaces its failed attempt
    rows = []
    for name, trial in latest.items():
        run_dir = output_dir / name
        value = trial.value if trial.state.name == "COMPLETE" else None
        if trial.state.name == "PRUNED" and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        rows.append(
            TrialRow(
                number=trial.number,
                run_dir=name,
                state=trial.state.name.lower(),
                value=value,
                params=dict(trial.params),
                steps=read_json(run_dir / "results" / "train.json").get("steps"),
                planned_steps=read_json(run_dir / "plan.json").get("total_steps"),
                test=read_json(run_dir / "results" / "test.json").get(metric or ""),
            )
        )
    return rows


def ranked(rows: list[TrialRow], maximize: bool) -> list[TrialRow]:
    """Complete trials best first, then pruned (by their last value), then the rest."""

    def key(row: TrialRow) -> tuple[int, float]:
        value = row.value if row.value is not None else float("-inf" if maximize else "inf")
        return STATE_ORDER.get(row.state.upper(), 5), -value if maximize else value

    return sorted(rows, key=key)


def search_summary(output_dir: Path) -> str:
    """The ranked table of a search, its best trial and the steps the pruner saved."""
    study = load_study(output_dir)
    signature = study.user_attrs.get("signature", {})
    metric = signature.get("metric", "value")
    maximize = study.direction.name == "MAXIMIZE"
    rows = ranked(trial_rows(output_dir, study), maximize)
    if not rows:
        return f"search: {output_dir}: no trials yet"
    keys = list(dict.fromkeys(k for row in rows for k in row.params))
    lines = [
        f"search: {output_dir}  method {signature.get('method')}  ranked by validation {metric} "
        f"({'higher' if maximize else 'lower'} is better)",
        f"{'rank':>4}  {'trial':<10}{'state':<10}{'validation':>11}{'test':>8}{'steps':>7}  "
        + "  ".join(keys),
    ]
    for i, row in enumerate(rows, start=1):
        params = "  ".join(show(row.params.get(k)) for k in keys)
        lines.append(
            f"{i:>4}  {row.run_dir:<10}{row.state:<10}{show(row.value):>11}{show(row.test):>8}"
            f"{show(row.steps):>7}  {params}"
        )
    lines += ["", *totals(rows)]
    return "\n".join(lines)


def totals(rows: list[TrialRow]) -> list[str]:
    states: dict[str, int] = {}
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1
    trained = sum(row.steps or 0 for row in rows)
    saved = sum(
        (row.planned_steps or 0) - (row.steps or 0)
        for row in rows
        if row.state == "pruned" and row.steps is not None
    )
    counts = ", ".join(f"{n} {state}" for state, n in states.items())
    return [f"trials: {counts}; steps trained: {trained}; steps saved by pruning: {saved}"]


def show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def search_report(output_dir: Path, out: Path | None = None) -> str:
    """PNGs of the optimisation history and parameter importance (Optuna's matplotlib plots)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    study = load_study(output_dir)
    out = out or output_dir
    out.mkdir(parents=True, exist_ok=True)
    written = []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    figures: dict[str, Callable[[Any], Any]] = {
        "optimization_history.png": plots.plot_optimization_history
    }
    if len(complete) >= 2:  # importance needs finished trials that differ
        figures["param_importances.png"] = plots.plot_param_importances
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in figures.items():
            figure: Any = plot(study).figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            figure.savefig(out / name, dpi=80)
            plt.close(figure)
            written.append(out / name)
    lines = [search_summary(output_dir), ""]
    lines += [f"plot: {path}" for path in written]
    if len(complete) < 2:
        lines.append("parameter importance: needs at least 2 complete trials")
    return "\n".join(lines)
