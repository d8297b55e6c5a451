"""Where a batch's soft targets come from: the on-disk cache, or the teacher run online."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from nluft.data.collate import MODEL_INPUTS, collate
from nluft.data.teacher_cache import (
    TeacherLogits,
    load_teacher_logits,
    save_teacher_logits,
    teacher_cache_path,
    teacher_digest,
)
from nluft.evaluate import head_output


@torch.no_grad()
def compute_teacher_logits(
    teacher: torch.nn.Module, features: Dataset, batch_size: int, pad_id: int, device: Any = "cpu"
) -> list[np.ndarray]:
    """Logits of every feature (fp32, padding trimmed), in feature order; batches by length."""
    lengths = features["length"]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    columns = [c for c in MODEL_INPUTS if c in features.column_names]
    rows: list[np.ndarray | None] = [None] * len(lengths)
    teacher = teacher.to(device)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = collate(features.select_columns(columns)[indices], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = head_output(teacher(**batch), batch["attention_mask"]).float().cpu()
        for row, index in enumerate(indices):
            out = logits[row].numpy()
            rows[index] = out[: lengths[index]] if out.ndim >= 2 else out
    return [row for row in rows if row is not None]


def cached_teacher_logits(
    teacher_export: Path,
    load: Callable[[], torch.nn.Module],
    features: Dataset,
    cache_key: tuple[str, str],
    batching: tuple[int, int, Any],
    is_main: bool,
    barrier: Callable[[], None],
) -> tuple[TeacherLogits, bool]:
    """The cached logits (rank 0 computes them on a miss; the others wait); and whether it hit.

    `cache_key` is (cache dir, encoded-features key); `batching` is (batch size, pad id, device).
    """
    cache_dir, features_key = cache_key
    path = teacher_cache_path(cache_dir, teacher_digest(teacher_export), features_key)
    hit = load_teacher_logits(path, len(features)) is not None
    if is_main and not hit:
        save_teacher_logits(path, compute_teacher_logits(load(), features, *batching))
    barrier()
    cached = load_teacher_logits(path, len(features))
    assert cached is not None, f"teacher logits missing at {path}"
    return cached, hit


def pad_rows(rows: Sequence[np.ndarray], length: int) -> torch.Tensor:
    """Stack per-feature logits; per-token rows are zero-padded to the batch's sequence length."""
    if rows[0].ndim == 1:
        return torch.from_numpy(np.stack(rows))
    out = np.zeros((len(rows), length, *rows[0].shape[1:]), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


class TeacherSource:
    """Soft targets of a batch, by training-feature index; online also gives hidden states."""

    def __init__(
        self, cached: TeacherLogits | None, teacher: torch.nn.Module | None, device: Any
    ) -> None:
        assert (cached is None) != (teacher is None), "exactly one source"
        self.cached = cached
        self.teacher = teacher.to(device) if teacher is not None else None

    @torch.no_grad()
    def __call__(
        self, inputs: dict[str, torch.Tensor], indices: Sequence[int], hidden: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        mask = inputs["attention_mask"]
        if self.cached is not None:
            logits = pad_rows(self.cached.rows(indices), mask.size(1)).to(mask.device)
            return logits, None
        assert self.teacher is not None
        outputs = self.teacher(**inputs, **({"output_hidden_states": True} if hidden else {}))
        states = getattr(outputs, "hidden_states", None) if hidden else None
        return head_output(outputs, mask).float(), states
