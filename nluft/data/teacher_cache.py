"""Teacher logits of every training feature, computed once and kept on disk for distillation.

Keyed by the teacher (a digest of its exported weights and config) and by the encoded training
data (the tokenized-features cache key), so student runs, sweeps and resumes reuse one file; a
retrained teacher or changed data gets a new entry. Stored as one flat float32 array plus offsets
and shapes (per-token logits have one row per token, so rows differ in size); read memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
FILES = ("logits.npy", "offsets.npy", "shapes.npy")


def teacher_digest(export_dir: Path) -> str:
    """Content digest of an exported teacher: its weights and config, not its path."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    for name in sorted(os.listdir(export_dir)):
        if name.endswith((".safetensors", ".json")) and not name.startswith("tokenizer"):
            with (export_dir / name).open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def teacher_cache_path(cache_dir: str | Path, teacher_key: str, features_key: str) -> Path:
    return Path(cache_dir) / "teacher_logits" / f"{features_key}-teacher-{teacher_key}"


class TeacherLogits:
    """Read-only logits per training feature, in feature order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.flat = np.load(path / "logits.npy", mmap_mode="r")
        self.offsets = np.load(path / "offsets.npy")
        self.shapes = np.load(path / "shapes.npy")

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> np.ndarray:
        start, end = self.offsets[index], self.offsets[index + 1]
        return np.asarray(self.flat[start:end]).reshape(tuple(self.shapes[index]))

    def rows(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [self[int(i)] for i in indices]


def load_teacher_logits(path: Path, num_features: int) -> TeacherLogits | None:
    """The cached logits, or None when absent or written for a different number of features."""
    if not all((path / name).is_file() for name in FILES):
        return None
    cached = TeacherLogits(path)
    return cached if len(cached) == num_features else None


def save_teacher_logits(path: Path, rows: Sequence[np.ndarray]) -> None:
    """Write to a private temporary folder, then rename (concurrent student runs may race)."""
    shapes = np.array([row.shape for row in rows], dtype=np.int64)
    sizes = np.array([row.size for row in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = np.concatenate([np.asarray(row, dtype=np.float32).ravel() for row in rows])
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    np.save(tmp / "logits.npy", flat)
    np.save(tmp / "offsets.npy", offsets)
    np.save(tmp / "shapes.npy", shapes)
    meta = {"version": FORMAT_VERSION, "num_features": len(rows)}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        tmp.replace(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if load_teacher_logits(path, len(rows)) is None:
            raise
        # Another run published the same logits first.
