"""`nluft export`: a run's checkpoint as a Hugging Face folder (safetensors + tokenizer).

Training exports at the end on its own; this re-exports afterwards: the best or latest checkpoint
of a run, or any one checkpoint directory, whatever world size wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nluft.checkpoint import MANIFEST, PREFIX, STATE, export_model, verify_manifest
from nluft.config import StrategyConfig
from nluft.data.loading import load_raw_splits
from nluft.data.vocab import extend_vocab_from_data
from nluft.distributed import DistEnv, build_strategy, read_checkpoint_weights
from nluft.errors import NluftError
from nluft.evaluate import load_run_config
from nluft.models import build_model, build_tokenizer, first_line
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
    """Load a checkpoint's weights into the run's model and write the Hugging Face folder.

    One plain process reads any strategy's checkpoint (replicated file, FSDP's DCP shards,
    DeepSpeed's ZeRO files) whatever world size wrote it, then writes through `export_model`,
    the end-of-training export.
    """
    run_dir, checkpoint = find_checkpoint(path, which)
    cfg = load_run_config(run_dir, [])
    task = build_task(cfg)
    examples, _ = load_raw_splits(cfg.data, cfg.ner if cfg.task == "ner" else None)
    task.prepare(examples)  # the label set, hence the head's size, comes from the training data
    tokenizer = build_tokenizer(cfg.model, task)
    extend_vocab_from_data(cfg, task, examples, tokenizer)  # the run's added tokens, if any
    extend_tokenizer = getattr(task, "extend_tokenizer", None)
    if extend_tokenizer is not None:  # the task's own tokens (relation's entity markers)
        extend_tokenizer(tokenizer)
    one = cfg.model_copy(update={"strategy": StrategyConfig(timeout_s=cfg.strategy.timeout_s)})
    strategy = build_strategy(one, DistEnv())
    strategy.setup_inference(build_model(cfg.model, task, tokenizer, cfg.peft))
    model = strategy.unwrapped()
    template, frozen = model.state_dict(), set[str]()
    if cfg.peft is not None:  # a PEFT checkpoint holds what trains; the rest is the base model
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        frozen = set(template) - trainable
        template = {k: v for k, v in template.items() if k in trainable}
    try:
        weights = read_checkpoint_weights(cfg, checkpoint, template)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise NluftError(f"{checkpoint}: cannot read its weights ({first_line(err)})") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in tied_names(model) and k not in frozen]
    if missing or unexpected:
        raise NluftError(
            f"{checkpoint}: its weights do not fit the run's model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); was config.yaml edited after training?"
        )
    default = run_dir / ("export" if path == run_dir else f"export-{checkpoint.name}")
    export_dir = export_model(strategy, tokenizer, out or default)
    assert export_dir is not None
    return export_dir


def tied_names(model: Any) -> set[str]:
    """State-dict keys sharing storage with another key (safetensors files keep one of them)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            tied |= {name, seen[ptr]}
        seen[ptr] = name
    return tied
