"""`nluft export`: a run's checkpoint as a Hugging Face folder (safetensors + tokenizer).

Training exports at the end on its own; this re-exports afterwards: the best or latest checkpoint
of a run, or any one checkpoint directory, whatever world size wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path

from nluft.checkpoint import MANIFEST, PREFIX, STATE, export_model, verify_manifest
from nluft.data.loading import load_raw_splits
from nluft.data.vocab import extend_vocab_from_data
from nluft.distributed import DistEnv, build_strategy
from nluft.errors import NluftError
from nluft.evaluate import load_run_config
from nluft.models import build_model, build_tokenizer
from nluft.tasks import build_task


def find_checkpoint(path: Path, which: str) -> tuple[Path, Path]:
    """(run_dir, checkpoint) for a run directory (its best or latest) or a checkpoint directory."""
    if (path / MANIFEST).is_file() or path.name.startswith(PREFIX):
        checkpoint, run_dir = path, path.parent.parent
    elif (path / "config.yaml").is_file():
        run_dir = path
        intact = [p for p in sorted((path / "checkpoints").glob(f"{PREFIX}*")) if is_intact(p)]
        if not intact:
            raise NluftError(f"{path}: no complete checkpoint to export")
        checkpoint = intact[-1]
        best = json.loads((checkpoint / STATE).read_text()).get("best_step")
        best_path = run_dir / "checkpoints" / f"{PREFIX}{best:08d}" if best is not None else None
        if which == "best" and best_path is not None and best_path in intact:
            checkpoint = best_path
    else:
        raise NluftError(f"{path}: neither a run directory (config.yaml) nor a checkpoint")
    problem = verify_manifest(checkpoint)
    if problem:
        raise NluftError(f"{checkpoint}: cannot export a damaged checkpoint ({problem})")
    return run_dir, checkpoint


def is_intact(path: Path) -> bool:
    return verify_manifest(path) is None


def export_run(path: Path, which: str = "best", out: Path | None = None) -> Path:
    """Load a checkpoint's weights into the run's model and write the Hugging Face folder."""
    run_dir, checkpoint = find_checkpoint(path, which)
    cfg = load_run_config(run_dir, [])
    # Replicated checkpoints (single, ddp) hold the full model in one file: one process reads it.
    cfg = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"name": "single"})})
    task = build_task(cfg)
    examples, _ = load_raw_splits(cfg.data, cfg.ner if cfg.task == "ner" else None)
    task.prepare(examples)  # the label set, hence the head's size, comes from the training data
    tokenizer = build_tokenizer(cfg.model)
    extend_vocab_from_data(cfg, task, examples, tokenizer)  # the run's added tokens, if any
    strategy = build_strategy(cfg, DistEnv())
    strategy.setup_inference(build_model(cfg.model, task, tokenizer))
    strategy.load(checkpoint, weights_only=True)
    default = run_dir / ("export" if path == run_dir else f"export-{checkpoint.name}")
    export_dir = export_model(strategy, tokenizer, out or default)
    assert export_dir is not None
    return export_dir
