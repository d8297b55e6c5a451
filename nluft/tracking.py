"""Where metrics go: a rank-0 progress bar, console lines, `metrics.jsonl` and, when enabled, W&B.

Every `Tracker` method is safe on every rank; only rank 0 writes, prints or starts a W&B run.
`wandb` is imported here and nowhere else, and only when `tracking.wandb.enabled` is true.
The W&B run id lives in `RUN_DIR/wandb_run_id`, so `--resume` and a Slurm requeue continue the
same W&B run (`resume="allow"`) on the same step axis: the global optimizer step.
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from nluft.config import Config
from nluft.errors import NluftError
from nluft.hardware import Hardware
from nluft.redaction import redact, redact_text

RUN_ID_FILE = "wandb_run_id"
EXIT_STOPPED = 3  # as the CLI's: stopped on a signal after checkpointing
# Kinds a resumed run recomputes identically; steps already sent before a hard kill are skipped.
REPLAYED = ("train", "eval/")


class Tracker:
    """Progress bar, metrics.jsonl and an optional W&B run, all on rank 0 only."""

    def __init__(self, run_dir: Path, is_main: bool, progress_bar: bool) -> None:
        self.run_dir = run_dir
        self.is_main = is_main
        self.progress_bar = progress_bar and is_main
        self.bar: tqdm[Any] | None = None
        # What reached W&B before this process started (resume, requeue): last step per kind.
        self.logged = last_logged_steps(run_dir / "metrics.jsonl") if is_main else {}
        self.file = (run_dir / "metrics.jsonl").open("a", encoding="utf-8") if is_main else None
        self.hardware: Hardware | None = None
        self.world_size = 1
        self.wandb: WandbSink | None = None

    def open(self, cfg: Config, facts: dict[str, Any], hardware: Hardware | None = None) -> None:
        """Note the hardware (memory, MFU); on rank 0 start or resume the W&B run when enabled."""
        self.hardware, self.world_size = hardware, int(facts.get("world_size", 1))
        if hardware is not None and hardware.hint:
            self.info(hardware.hint)
        wcfg = cfg.tracking.wandb
        if self.is_main and wcfg.enabled and wcfg.mode != "disabled":
            self.wandb = WandbSink(self.run_dir, cfg, facts, self.logged, self.info)

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

    @property
    def shows_progress(self) -> bool:
        """A progress bar is drawn (it shows the loss of every step)."""
        return self.bar is not None

    def advance(self, step: int, loss: float, examples_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{examples_per_s:.1f}", refresh=False)

    def log(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        """Append a record to metrics.jsonl (`kind`: train, eval/<split>, final/<split>, event)."""
        if self.file is None:
            return
        if kind == "train" and self.hardware is not None:
            metrics = {
                **metrics,
                **self.hardware.sample(
                    metrics.get("tokens_per_s"),
                    self.world_size,
                    metrics.get("attention_context", 0.0),
                ),
            }
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **metrics}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(step, kind, metrics)

    def log_confusion_matrix(self, split: str, labels: list[str], matrix: list[list[int]]) -> None:
        """A final confusion matrix (rows are references) as a W&B plot; results/ has the JSON."""
        if self.wandb is not None:
            self.wandb.log_confusion_matrix(split, labels, matrix)

    def summarize(
        self, results: dict[str, dict[str, float]], extra: dict[str, Any], export_dir: Path | None
    ) -> None:
        """The run's final summary in W&B (metrics per split, best step) and the model artifact."""
        if self.wandb is not None:
            self.wandb.summarize(results, extra, export_dir)

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
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


class WandbSink:
    """One W&B run per training run (rank 0), resumed under the id saved in the run dir."""

    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        facts: dict[str, Any],
        logged: dict[str, int],
        say: Callable[[str], None],
    ) -> None:
        self.wandb = import_wandb()
        self.cfg = cfg.tracking.wandb
        self.logged, self.say = logged, say
        self.floor = self.step = max(logged.values(), default=0)
        self.stopped = self.summarized = False
        mode, reason = choose_mode(self.cfg.mode, os.environ)
        if reason:
            say(reason)
        run_id = read_or_create_run_id(run_dir)
        self.run = self.init(run_dir, run_id, mode, facts)
        self.run.config.update(wandb_config(cfg, facts), allow_val_change=True)
        if self.run.settings.mode == "offline":
            say(
                f"W&B run {run_id} is offline; upload it later with: wandb sync {run_dir / 'wandb'}"
            )

    def init(self, run_dir: Path, run_id: str, mode: str, facts: dict[str, Any]) -> Any:
        """`wandb.init` that never prompts; an unreachable server means offline, not a crash."""
        array_job = facts.get("slurm_array_job_id")
        group = self.cfg.group or (f"slurm-array-{array_job}" if array_job else None)
        kwargs = dict(
            project=self.cfg.project,
            entity=self.cfg.entity,
            group=group and redact_text(group),
            tags=redact(self.cfg.tags) or None,
            name=redact_text(self.cfg.name or run_dir.resolve().name),
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            # No git capture: a remote URL can carry a token. The commit is in the config instead.
            settings=self.wandb.Settings(disable_git=True, save_code=False, quiet=True),
        )
        # W&B records the command line (sys.argv) in the run's metadata: hide any secret in it.
        argv, sys.argv = sys.argv, [redact_text(arg) for arg in sys.argv]
        try:
            return self.wandb.init(mode=mode, **kwargs)
        except Exception as err:  # any W&B failure must not stop training
            if mode == "offline":
                raise
            self.say(f"W&B init failed ({err}); continuing offline")
            return self.wandb.init(mode="offline", **kwargs)
        finally:
            sys.argv = argv

    def log(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        if kind.startswith(REPLAYED) and step <= self.logged.get(kind, 0):
            return  # recomputed by a resumed run exactly as W&B already has it
        if kind == "event":
            data = {f"event/{metrics['event']}": 1}
            if metrics["event"] == "stopped":
                self.stopped = True
                self.run.mark_preempting()
        else:
            data = {f"{kind}/{k}": v for k, v in metrics.items() if is_number(v)}
        # W&B steps only increase, so what a resumed run logs at or below a step an earlier
        # process sent (events, final metrics, an evaluation a stop cut short) lands just past it.
        self.step = max(step, self.step, self.floor + 1)
        self.run.log(data, step=self.step)

    def log_confusion_matrix(self, split: str, labels: list[str], matrix: list[list[int]]) -> None:
        y_true = [r for r, row in enumerate(matrix) for p, n in enumerate(row) for _ in range(n)]
        preds = [p for row in matrix for p, n in enumerate(row) for _ in range(n)]
        plot = self.wandb.plot.confusion_matrix(
            y_true=y_true, preds=preds, class_names=labels, title=f"{split} confusion matrix"
        )
        self.run.log({f"final/{split}/confusion_matrix": plot}, step=self.step)

    def summarize(
        self, results: dict[str, dict[str, float]], extra: dict[str, Any], export_dir: Path | None
    ) -> None:
        for split, metrics in results.items():
            for key, value in metrics.items():
                self.run.summary[f"final/{split}/{key}"] = value
        for key, value in extra.items():
            self.run.summary[key] = value
        if self.cfg.log_model and export_dir is not None:
            artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model")
            artifact.add_dir(str(export_dir))
            self.run.log_artifact(artifact, aliases=["latest", f"step-{self.step}"])
        self.summarized = True

    def finish(self) -> None:
        # 0 after a full run; the CLI's stop code after a signal; 1 when training raised.
        code = 0 if self.summarized else EXIT_STOPPED if self.stopped else 1
        self.run.finish(exit_code=code)
        # finish() can return before wandb-core has written the run's last records; teardown
        # waits for it. A requeue must not kill the job before the run file is complete.
        self.wandb.teardown()


def import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise NluftError(
            "tracking.wandb.enabled: wandb is not installed; pip install 'nluft[wandb]'"
        ) from None
    return wandb


def has_api_key(environ: Mapping[str, str]) -> bool:
    """Whether W&B can authenticate without asking: env var, token file, or a netrc entry."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = environ.get("NETRC") or str(Path(environ.get("HOME", "~")).expanduser() / ".netrc")
    try:
        return host is not None and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_mode(requested: str, environ: Mapping[str, str]) -> tuple[str, str | None]:
    """The W&B mode to run in, and why it differs from the config when it does."""
    if requested != "online" or has_api_key(environ):
        return requested, None
    # Without a key wandb would prompt for one; a batch job would wait forever. Go offline.
    return "offline", (
        "W&B: no API key (WANDB_API_KEY or ~/.netrc), so logging offline instead of prompting; "
        "run `wandb login` once to be able to upload it"
    )


def read_or_create_run_id(run_dir: Path) -> str:
    """The run's W&B id: saved on first start, reused by every resume and requeue."""
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        run_id = path.read_text(encoding="utf-8").strip()
        if run_id:
            return run_id
    run_id = secrets.token_hex(4)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(run_id + "\n", encoding="utf-8")
    tmp.replace(path)
    return run_id


def wandb_config(cfg: Config, facts: dict[str, Any]) -> dict[str, Any]:
    """The fully resolved config plus run facts (Slurm, world size, strategy, precision, git)."""
    run = {**facts, "git_commit": git_commit()}
    return dict(redact({**cfg.model_dump(mode="json"), "run": run}))


def git_commit() -> str:
    """The commit of the nluft checkout that runs, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def last_logged_steps(path: Path) -> dict[str, int]:
    """The highest step of each kind in an existing metrics.jsonl (empty for a new run)."""
    if not path.is_file():
        return {}
    steps: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            kind, step = str(record["kind"]), int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a hard kill
        steps[kind] = max(step, steps.get(kind, 0))
    return steps


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_table(rows: dict[str, dict[str, float]], keys: list[str]) -> str:
    """A plain-text table: one row per split, one column per metric."""
    width = max([len(k) for k in keys] + [8])
    header = "split".ljust(12) + "".join(k.rjust(width + 2) for k in keys)
    lines = [header, "-" * len(header)]
    for split, metrics in rows.items():
        cells = "".join(f"{metrics.get(k, float('nan')):.4f}".rjust(width + 2) for k in keys)
        lines.append(split.ljust(12) + cells)
    return "\n".join(lines)
