"""The student: the teacher with every k-th (or chosen) layer kept, or any checkpoint that shares
the teacher's tokenizer.

A student built from the teacher is written once as a Hugging Face folder under
`data.cache_dir/students/` (keyed by the teacher's weights and the kept layers), so every rank,
resume and `nluft export` rebuilds exactly the same model from `model.name_or_path`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from nluft.config import Config
from nluft.data.teacher_cache import teacher_digest
from nluft.errors import NluftError
from nluft.models import build_tokenizer, load_exported
from nluft.tasks import Task


def teacher_export_dir(cfg: Config) -> Path:
    """The teacher run's exported model; one clear line when there is none."""
    run_dir = Path(str(cfg.distill.teacher))
    export = run_dir / "export"
    if not (export / "config.json").is_file():
        raise NluftError(
            f"distill.teacher: {run_dir} has no exported model ({export}/config.json); "
            "name a finished nluft run directory (or run nluft export on it)"
        )
    return export


def teacher_num_layers(export: Path) -> int:
    config = json.loads((export / "config.json").read_text())
    layers = config.get("num_hidden_layers") or config.get("n_layers") or config.get("n_layer")
    if not isinstance(layers, int):
        raise NluftError(f"distill.teacher: {export}/config.json does not say its number of layers")
    return layers


def kept_layers(cfg: Config, num_layers: int) -> list[int] | None:
    """Teacher layers the student keeps (None: the student is model.name_or_path)."""
    options = cfg.distill
    if options.keep_every is not None:
        return list(range(0, num_layers, options.keep_every))
    if options.student_layers is not None:
        if max(options.student_layers) >= num_layers:
            raise NluftError(
                f"distill.student_layers: {options.student_layers} names a layer the teacher "
                f"lacks (it has {num_layers}, numbered 0..{num_layers - 1})"
            )
        return list(options.student_layers)
    return None


def check_same_tokenizer(cfg: Config, task: Task, export: Path) -> None:
    """Soft targets are per token position: student and teacher must share one vocabulary."""
    student = build_tokenizer(cfg.model, task)
    teacher = build_tokenizer(
        cfg.model.model_copy(update={"name_or_path": str(export), "tokenizer_name_or_path": None}),
        task,
    )
    if student.get_vocab() != teacher.get_vocab():
        raise NluftError(
            f"distill.teacher: the student's tokenizer ({student.name_or_path}, vocabulary "
            f"{len(student)}) differs from the teacher's ({export}, vocabulary {len(teacher)}); "
            "use a student with the teacher's tokenizer or set distill.keep_every"
        )


def encoder_layers(model: torch.nn.Module, num_layers: int) -> tuple[torch.nn.Module, str]:
    """The module holding the transformer blocks as a ModuleList, and that list's attribute."""
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == num_layers:
                return module, name
    raise NluftError(
        f"distill.keep_every: cannot find the {num_layers} transformer layers of "
        f"{type(model).__name__} to keep some of"
    )


def build_student_dir(cfg: Config, task: Task, export: Path, keep: list[int]) -> Path:
    """The teacher minus the layers not kept (head included), saved once under the cache."""
    key = f"{teacher_digest(export)}-layers-{'-'.join(map(str, keep))}"
    path = Path(cfg.data.cache_dir) / "students" / key
    if (path / "config.json").is_file():
        return path
    model: Any
    model, tokenizer = load_exported(export, task)
    hf_config: Any = model.config
    parent, name = encoder_layers(model, hf_config.num_hidden_layers)
    layers = getattr(parent, name)
    setattr(parent, name, torch.nn.ModuleList([layers[i] for i in keep]))
    for new_index, layer in enumerate(getattr(parent, name)):
        attention = getattr(layer, "attention", None) or getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index  # decoders index their KV cache by layer
    hf_config.num_hidden_layers = len(keep)
    text_config = getattr(hf_config, "text_config", None)  # multimodal wrappers
    if text_config is not None:
        text_config.num_hidden_layers = len(keep)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.replace(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another rank or run wrote the same student
    return path


def load_teacher(export: Path, task: Task) -> torch.nn.Module:
    """The teacher in eval mode (no dropout: cached and online soft targets agree), frozen."""
    model, _ = load_exported(export, task)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def check_teacher_labels(task: Task, export: Path) -> None:
    """The student learns the teacher's label set: same names, same order."""
    config = json.loads((export / "config.json").read_text())
    id2label = config.get("id2label") or {}
    names = [id2label[str(i)] for i in range(len(id2label))] if task.label_names else []
    if names and names != list(task.label_names):
        raise NluftError(
            f"distill.teacher: the teacher ({export}) was trained on labels {names}, the student's "
            f"data has {task.label_names}; distil on the teacher's task and data"
        )
