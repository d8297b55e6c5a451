"""Run directory layout, atomic checkpoints with a manifest, resume, retention and export.

    RUN_DIR/config.yaml              the fully resolved config
    RUN_DIR/plan.json                derived settings (world size, batches, steps)
    RUN_DIR/metrics.jsonl            one JSON object per logged step or evaluation
    RUN_DIR/checkpoints/step-000120/ strategy files + trainer_state.json + rng-R.pt + MANIFEST.json
    RUN_DIR/export/                  Hugging Face model + tokenizer (safetensors)
    RUN_DIR/results/                 final metrics per split, confusion matrix
    RUN_DIR/wandb_run_id, wandb/     with W&B on: the run's id (reused on resume) and its files
    RUN_DIR/report.png               written by `nluft report`

A checkpoint is written into `checkpoints/.tmp-step-N`, fsynced, given a manifest of file sizes
and SHA-256 sums, then renamed into place; a directory without a valid manifest is never loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nluft.config import Config, Plan, to_yaml
from nluft.distributed import Strategy
from nluft.errors import NluftError
from nluft.models.peft import is_peft_model, save_merged_and_adapter

MANIFEST = "MANIFEST.json"
STATE = "trainer_state.json"
PLAN = "plan.json"  # the plan the run was saved under (batch, steps): checked on resume
PREFIX = "step-"


@dataclass
class TrainState:
    """Where training is; enough to continue mid-epoch exactly."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    finished: bool = False
    # A stop cut the evaluation of `global_step` short; it runs first on resume, so the best
    # step and early stopping come out as in an uninterrupted run. (Older checkpoints: False.)
    pending_eval: bool = False
    bad_steps: int = 0  # consecutive steps with a NaN/Inf loss or gradient
    train_seconds: float = 0.0  # time in training steps (evaluation and checkpoints excluded)
    real_tokens: int = 0  # non-pad tokens seen by this rank
    padded_slots: int = 0  # token slots (real + padding) seen by this rank


# --- run directory -------------------------------------------------------------------------


def prepare_run_dir(
    cfg: Config,
    resume: bool,
    overwrite: bool,
    is_main: bool,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Check (and on rank 0 create) the run directory; never reuse one silently."""
    run_dir = check_run_dir(cfg, resume, overwrite)
    create_run_dir(cfg, overwrite, is_main, barrier)
    return run_dir


def check_run_dir(cfg: Config, resume: bool, overwrite: bool) -> Path:
    """Refuse to reuse or replace a run directory unless asked; writes nothing."""
    run_dir = Path(cfg.output_dir)
    holds_run = (run_dir / "config.yaml").is_file()
    # `nluft submit` puts the job script and Slurm logs in RUN_DIR/slurm before training starts.
    foreign = (
        not holds_run and run_dir.is_dir() and any(p.name != "slurm" for p in run_dir.iterdir())
    )
    if resume and overwrite:
        raise NluftError("--resume and --overwrite contradict each other; pass one")
    if holds_run and not (resume or overwrite):
        raise NluftError(
            f"output_dir: {run_dir} already holds a run; pass --resume to continue it, "
            "--overwrite to replace it, or set output_dir=NEW_DIR"
        )
    if foreign:
        raise NluftError(
            f"output_dir: {run_dir} is not empty and is not an nluft run (no config.yaml); "
            "choose another output_dir"
        )
    return run_dir


def create_run_dir(
    cfg: Config, overwrite: bool, is_main: bool, barrier: Callable[[], None] = lambda: None
) -> None:
    """Rank 0 creates (with --overwrite: replaces) the run directory and saves the config."""
    run_dir = Path(cfg.output_dir)
    barrier()  # every rank has checked before rank 0 creates it (else the others would refuse)
    if is_main:
        if (run_dir / "config.yaml").is_file() and overwrite:
            shutil.rmtree(run_dir)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", to_yaml(cfg))


def write_plan(run_dir: Path, plan: Plan, extra: dict[str, Any]) -> None:
    write_atomic(run_dir / "plan.json", json.dumps({**dataclasses.asdict(plan), **extra}, indent=2))


def write_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file, fsync it, and rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


# --- checkpoints ---------------------------------------------------------------------------


class Checkpointer:
    """Saves and finds checkpoints; owns retention (keep the last N plus the best)."""

    def __init__(
        self, run_dir: Path, keep_last: int, strategy: Strategy, plan: Plan | None = None
    ) -> None:
        self.root = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.strategy = strategy
        self.is_main = strategy.env.is_main
        self.plan = plan

    def save(self, state: TrainState, rng: dict[str, Any] | None = None) -> Path:
        """Write a complete checkpoint of the current step (every rank calls this).

        `rng`: this rank's random state to store instead of the current one (a stop inside an
        accumulation group stores the state at the group's start, so resume redoes it exactly).
        A failed write (disk full, I/O error) on any rank removes the partial files on every rank
        and raises: training never continues as if it had saved.
        """
        final = self.root / f"{PREFIX}{state.global_step:08d}"
        tmp = self.root / f".tmp-{final.name}"
        self.guarded(final, tmp, lambda: self.prepare_tmp(tmp))
        self.guarded(final, tmp, lambda: self.write_rank_files(tmp, rng))
        self.guarded(final, tmp, lambda: self.seal(tmp, final, state))
        return final

    def prepare_tmp(self, tmp: Path) -> None:
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def write_rank_files(self, tmp: Path, rng: dict[str, Any] | None = None) -> None:
        self.strategy.save(tmp)
        torch.save(rng or rng_state(), tmp / f"rng-{self.strategy.env.rank}.pt")

    def seal(self, tmp: Path, final: Path, state: TrainState) -> None:
        """Rank 0: trainer state, manifest, fsync, then the rename that publishes the checkpoint."""
        if not self.is_main:
            return
        write_atomic(tmp / STATE, json.dumps(dataclasses.asdict(state), indent=2))
        if self.plan is not None:
            write_atomic(tmp / PLAN, json.dumps(dataclasses.asdict(self.plan), indent=2))
        write_atomic(tmp / MANIFEST, json.dumps(build_manifest(tmp), indent=2))
        fsync_dir(tmp)
        old = self.root / f".old-{final.name}"
        if final.exists():  # a second save at the same step: swap, so one copy always exists
            final.rename(old)
        tmp.rename(final)
        fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)
        self.apply_retention(state.best_step)

    def guarded(self, final: Path, tmp: Path, phase: Callable[[], None]) -> None:
        """Run one phase on every rank; if any rank failed, clean up and raise on all of them."""
        error: BaseException | None = None
        try:
            phase()
        except Exception as err:  # OSError, or a library's own wrapper of one (safetensors)
            error = err
        if not self.strategy.any_rank(error is not None):
            return
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = self.latest_name()
        reason = f"{type(error).__name__}: {error}" if error else "failed on another rank"
        raise NluftError(
            f"checkpoint {final.name} could not be written ({reason}); partial files removed; "
            f"latest complete checkpoint: {kept}"
        )

    def latest_name(self) -> str:
        found = sorted(self.root.glob(f"{PREFIX}*"))
        return found[-1].name if found else "none"

    def complete(self) -> list[Path]:
        """Checkpoints whose manifest matches their files, oldest first; others are warned about."""
        found = []
        for path in sorted(self.root.glob(f"{PREFIX}*")):
            problem = verify_manifest(path)
            if problem:
                warnings.warn(f"skipping checkpoint {path}: {problem}", stacklevel=2)
            else:
                found.append(path)
        return found

    def latest(self) -> Path | None:
        found = self.complete()
        if not found and any(self.root.glob(f"{PREFIX}*")):
            raise NluftError(
                f"{self.root}: checkpoints exist but none is complete and intact; "
                "refusing to start from scratch (move them aside to start over)"
            )
        return found[-1] if found else None

    def load(self, path: Path) -> TrainState:
        """Restore strategy state and this rank's RNG; return the trainer state."""
        if self.plan is not None and (path / PLAN).is_file():
            check_resumable(json.loads((path / PLAN).read_text()), self.plan)
        self.strategy.load(path)
        rng_file = path / f"rng-{self.strategy.env.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        state = json.loads((path / STATE).read_text())
        return TrainState(**state)

    def apply_retention(self, best_step: int | None) -> None:
        steps = sorted(self.root.glob(f"{PREFIX}*"))
        keep = set(steps[-self.keep_last :])
        if best_step is not None:
            keep.add(self.root / f"{PREFIX}{best_step:08d}")
        for path in steps:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def path_of(self, step: int) -> Path:
        return self.root / f"{PREFIX}{step:08d}"


def check_resumable(saved: dict[str, Any], now: Plan) -> None:
    """Resuming continues the saved batch order and schedule: same global batch, same steps.

    Checked for every strategy before any state is read (ddp, FSDP and DeepSpeed alike).
    """
    if saved["effective_batch"] != now.effective_batch:
        raise NluftError(
            f"train.per_device_train_batch_size: the checkpoint was written with an effective "
            f"batch of {saved['effective_batch']}, this run has {now.effective_batch} on "
            f"{now.world_size} rank(s); set per_device_train_batch_size x ranks x "
            f"gradient_accumulation_steps = {saved['effective_batch']} to resume"
        )
    if saved["total_steps"] != now.total_steps:
        raise NluftError(
            f"train.max_steps: the checkpoint's learning-rate schedule runs {saved['total_steps']} "
            f"steps, this run plans {now.total_steps}; keep train.max_steps and "
            "train.num_train_epochs as they were to resume"
        )


def build_manifest(directory: Path) -> dict[str, Any]:
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[str(path.relative_to(directory))] = {
                "size": path.stat().st_size,
                "sha256": sha256(path),
            }
    return {"format": 1, "files": files}


def verify_manifest(directory: Path) -> str | None:
    """None when every file listed is present with its size and checksum; else the problem."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return "no manifest (incomplete write)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return "unreadable manifest"
    for name, meta in files.items():
        path = directory / name
        if not path.is_file():
            return f"missing {name}"
        if path.stat().st_size != meta["size"]:
            return f"{name} has {path.stat().st_size} bytes, expected {meta['size']}"
        if sha256(path) != meta["sha256"]:
            return f"{name} checksum mismatch"
    return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps(numpy_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def numpy_state() -> list[Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return [kind, np.asarray(keys).tolist(), pos, has_gauss, cached]


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- export --------------------------------------------------------------------------------


def export_model(strategy: Strategy, tokenizer: Any, export_dir: Path) -> Path | None:
    """Hugging Face folder (safetensors + tokenizer) that `transformers.pipeline` loads."""
    state_dict = strategy.export_state_dict()
    if not strategy.env.is_main:
        return None
    assert state_dict is not None
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NluftError(
                f"export: parameter {name} holds NaN/Inf; refusing to export a broken model"
            )
    tmp = export_dir.with_name(f".tmp-{export_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model: Any = strategy.unwrapped()
    adapter_dir = export_dir.with_name(f"{export_dir.name}-adapter")
    adapter_tmp = adapter_dir.with_name(f".tmp-{adapter_dir.name}")
    if is_peft_model(model):  # export: the merged model; export-adapter: the adapters alone
        shutil.rmtree(adapter_tmp, ignore_errors=True)
        save_merged_and_adapter(model, state_dict, tmp, adapter_tmp)
        tokenizer.save_pretrained(str(adapter_tmp))
        replace_dir(adapter_tmp, adapter_dir)
    else:
        model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, export_dir)
    return export_dir


def replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
