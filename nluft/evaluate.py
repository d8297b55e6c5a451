"""Inference over a split on every rank, gathered exactly: no padded duplicates, original order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from nluft.config import Config, load_config
from nluft.data import build_data, encode_split
from nluft.data.collate import LABEL_PAD, MODEL_INPUTS, collate
from nluft.data.loading import ROW_COLUMN
from nluft.data.sampling import eval_batches, num_eval_steps
from nluft.distributed import DistEnv, Strategy, build_strategy
from nluft.errors import NluftError
from nluft.models import load_exported, load_tokenizer
from nluft.quantize import is_quantized, load_quantized
from nluft.tasks import Task, build_task


class EvaluationStopped(Exception):
    """A stop request cut an evaluation short; every rank raises it before the same batch."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"evaluation stopped after {done} of {total} batches")
        self.done, self.total = done, total


def head_output(outputs: Any, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of any head; QA's start/end logits stacked as (batch, seq, 2).

    Given the attention mask, QA's padding positions get the lowest logit: a softmax over
    positions (the loss) then ignores them, whatever padding the rest of the batch brings.
    """
    if getattr(outputs, "logits", None) is not None:
        return outputs.logits
    stacked = torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)
    if attention_mask is None:
        return stacked
    return stacked.masked_fill(attention_mask[..., None] == 0, torch.finfo(stacked.dtype).min)


def run_inference(
    strategy: Strategy,
    task: Task,
    features: Dataset,
    batch_size: int,
    pad_token_id: int,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[np.ndarray], float | None]:
    """Logits of every feature in feature order, and the mean loss when features have labels.

    `should_stop` is asked before every batch and must give every rank the same answer (it is
    agreed across ranks); when it says yes, `EvaluationStopped` is raised on every rank.
    """
    env = strategy.env
    lengths = features["length"]
    columns = [c for c in (*MODEL_INPUTS, "labels") if c in features.column_names]
    mine: list[tuple[int, np.ndarray]] = []
    loss_sum, count = 0.0, 0
    model = strategy.model
    assert model is not None
    batches = eval_batches(lengths, batch_size, env.rank, env.world_size)
    with strategy.eval_mode():
        # Sharded models (ZeRO-3, FSDP) run collectives in every forward, so every rank runs the
        # same number of batches; a rank with fewer examples repeats one and discards the output.
        total = num_eval_steps(len(lengths), batch_size, env.world_size)
        for step in range(total):
            if should_stop is not None and should_stop():
                raise EvaluationStopped(step, total)
            keep = step < len(batches)
            indices = batches[step] if keep else (batches[0] if batches else [0])
            batch = collate(features.select_columns(columns)[indices], pad_token_id)
            labels = batch.pop("labels", None)
            batch = {k: v.to(strategy.device) for k, v in batch.items()}
            with strategy.autocast():
                logits = head_output(model(**batch), batch.get("attention_mask")).float()
            if not keep:
                continue
            if labels is not None:
                terms = loss_terms(labels)
                loss_sum += float(task.loss(logits, labels.to(strategy.device))) * terms
                count += terms
            for row, index in enumerate(indices):
                mine.append((index, trim(logits[row].cpu().numpy(), lengths[index])))
    gathered = strategy.all_gather_objects((mine, loss_sum, count))
    pairs = sorted((p for part, _, _ in gathered for p in part), key=lambda p: p[0])
    assert [i for i, _ in pairs] == list(range(len(features))), "every feature exactly once"
    total = sum(n for _, _, n in gathered)
    loss = sum(s for _, s, _ in gathered) / total if total else None
    return [logits for _, logits in pairs], loss


def loss_terms(labels: torch.Tensor) -> int:
    """How many terms a batch's mean loss averages: its scored labels (NER's padding and ignored
    sub-tokens left out), so the split's loss is the mean over all terms, whatever the batching
    and the number of ranks. Proportional to the batch size for one label (vector) per feature."""
    return int((labels != LABEL_PAD).sum())


def trim(logits: np.ndarray, length: int) -> np.ndarray:
    """Drop padding positions from token-level logits (sequence axis first)."""
    return logits[:length] if logits.ndim >= 2 else logits


def evaluate_split(
    strategy: Strategy,
    task: Task,
    examples: Dataset,
    features: Dataset,
    batch_size: int,
    pad_token_id: int,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict[str, float], list[Any]]:
    """Metrics of one split (identical on every rank) and the per-example predictions."""
    metrics, predictions, _ = score_split(
        strategy, task, examples, features, batch_size, pad_token_id, should_stop
    )
    return metrics, predictions


def score_split(
    strategy: Strategy,
    task: Task,
    examples: Dataset,
    features: Dataset,
    batch_size: int,
    pad_token_id: int,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict[str, float], list[Any], list[np.ndarray]]:
    """`evaluate_split`, plus the logits of every feature (for the saved predictions)."""
    logits, loss = run_inference(strategy, task, features, batch_size, pad_token_id, should_stop)
    predictions = task.predict(logits, features, examples)
    metrics = task.score(predictions, task.references(examples))
    if loss is not None:
        metrics = {"loss": loss, **metrics}
    return metrics, predictions, logits


def write_predictions(
    out_dir: Path,
    task: Task,
    split: str,
    examples: Dataset,
    features: Dataset,
    predictions: list[Any],
    logits: list[np.ndarray],
) -> list[Path]:
    """Save a split's predictions in the task's standard format (each written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in task.prediction_files(split, examples, features, predictions, logits).items():
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out_dir / name)
        written.append(out_dir / name)
    return written


def write_confusion_matrix(
    out_dir: Path, task: Task, split: str, examples: Dataset, predictions: list[Any]
) -> list[list[int]]:
    """`SPLIT_confusion_matrix.json` (rows are references, columns predictions); returns it."""
    import json

    from nluft.metrics import confusion_matrix

    refs = task.references(examples)
    matrix = confusion_matrix(predictions, refs, len(task.label_names)).tolist()
    payload = {"labels": task.label_names, "rows_are": "reference", "matrix": matrix}
    tmp = out_dir / f".{split}_confusion_matrix.json.tmp"
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    tmp.replace(out_dir / f"{split}_confusion_matrix.json")
    return matrix


def load_run_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config a run was trained with (its saved config.yaml), plus optional overrides."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise NluftError(f"{run_dir}: not an nluft run directory (no config.yaml)")
    return load_config(path, overrides)


def load_for_inference(
    run_dir: Path, overrides: list[str], export_dir: Path | None = None
) -> tuple[Config, Strategy, Task, Any]:
    """Config, a one-process strategy holding the exported model, the task, and the tokenizer.

    `export_dir` (default RUN_DIR/export) may be another export of the run, e.g. its int8 one.
    """
    cfg = load_run_config(run_dir, overrides)
    export_dir = export_dir or run_dir / "export"
    if not (export_dir / "config.json").is_file():
        raise NluftError(f"{export_dir}: no export yet (train to the end, or run nluft export)")
    cfg = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"name": "single"})})
    task = build_task(cfg)
    if is_quantized(export_dir):  # int8 kernels run on the CPU, in fp32 activations
        model, tokenizer = load_quantized(export_dir), load_tokenizer(str(export_dir), task)
        cpu = cfg.train.model_copy(update={"device": "cpu", "precision": "fp32"})
        cfg = cfg.model_copy(update={"train": cpu})
    else:
        model, tokenizer = load_exported(export_dir, task)
    hf_config: Any = model.config
    task.label_names = [hf_config.id2label[i] for i in range(hf_config.num_labels)]
    strategy = build_strategy(cfg, DistEnv())
    strategy.setup_inference(model)
    return cfg, strategy, task, tokenizer


def evaluate_run(
    run_dir: Path, split: str, overrides: list[str], export_dir: Path | None = None
) -> dict[str, float]:
    """Metrics of a run's exported model (or of `export_dir`) on one split of its data."""
    cfg, strategy, task, tokenizer = load_for_inference(run_dir, overrides, export_dir)
    data = build_data(cfg, task, tokenizer, is_main=True, barrier=lambda: None)
    if split not in data.features:
        raise NluftError(f"--split: no {split!r} split (have: {', '.join(data.features)})")
    examples, features = data.examples[split], data.features[split]
    metrics, predictions, logits = score_split(
        strategy,
        task,
        examples,
        features,
        cfg.train.per_device_eval_batch_size,
        int(tokenizer.pad_token_id or 0),
    )
    # Another export's predictions (e.g. export-int8) go beside the run's own, not over them.
    out = run_dir / "results"
    if export_dir is not None and export_dir.resolve() != (run_dir / "export").resolve():
        out = out / export_dir.name
    write_predictions(out, task, split, examples, features, predictions, logits)
    return metrics


def predict_run(
    run_dir: Path, records: list[dict[str, Any]], export_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Predictions with label names and scores for raw records (columns as in the config)."""
    cfg, strategy, task, tokenizer = load_for_inference(run_dir, [], export_dir)
    examples = Dataset.from_list(records).add_column(ROW_COLUMN, list(range(len(records))))
    # The same encoding as training data: an example may become several features (windows).
    features = encode_split(task, tokenizer, examples, "predict", {"predict": "--input"})
    logits, _ = run_inference(
        strategy,
        task,
        features,
        cfg.train.per_device_eval_batch_size,
        int(tokenizer.pad_token_id or 0),
    )
    predictions = task.predict(logits, features, examples)
    return [
        {**record, **out}
        for record, out in zip(records, task.describe(predictions, logits, examples), strict=True)
    ]
