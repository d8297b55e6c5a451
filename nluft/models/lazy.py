"""Build a model without reading its pre-trained weights; a sharding strategy reads them later.

`from_pretrained` is handed a state dict of placeholders: each pre-trained tensor is a zero-stride
view of one element (the shape is right, the memory is one number). Everything transformers,
`grow_embeddings` and peft then create themselves (the new task head, non-persistent buffers,
LoRA adapters) is built exactly as in an ordinary load, with the same random draws in the same
order, so a seeded run gets the same values. A strategy asks `deferred_weights(model)` which
parameters are still placeholders and reads only the rows it keeps (`DeferredWeights.read`)
straight from the safetensors files, so no rank ever holds the whole pre-trained model.
"""

from __future__ import annotations

import json
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from nluft.errors import NluftError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# safetensors dtype names -> torch dtypes
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass
class DeferredWeights:
    """Which of a model's tensors are placeholders, and where their pre-trained values live."""

    files: dict[str, Path]  # checkpoint key -> the safetensors file holding it
    # Storage address of each placeholder -> its checkpoint key; the bases keep addresses valid.
    placeholders: dict[int, str] = field(default_factory=dict)
    bases: list[torch.Tensor] = field(default_factory=list)
    # The dtype an ordinary load holds each tensor in (a later cast to fp32 rounds through it).
    load_dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def placeholder(self, key: str, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of `shape` and `dtype` that takes one element of memory and stands for `key`."""
        base = torch.full((), float("nan") if dtype.is_floating_point else 0, dtype=dtype)
        self.bases.append(base)
        self.placeholders[base.untyped_storage().data_ptr()] = key
        self.load_dtypes.setdefault(key, dtype)
        self.shapes[key] = tuple(shape)
        return base.expand(shape)

    def cast(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        """`model.to(dtype)` for floating tensors without reading placeholders (`model.float()`)."""
        for param in model.parameters():
            key = self.key_of(param)
            if key is not None and param.is_floating_point():
                param.data = self.placeholder(key, list(param.shape), dtype)
        model.to(dtype)

    def key_of(self, tensor: torch.Tensor) -> str | None:
        """The checkpoint key a placeholder stands for; None for a real tensor."""
        if tensor.device.type != "cpu":
            return None
        return self.placeholders.get(tensor.untyped_storage().data_ptr())

    def pending(self, model: torch.nn.Module) -> dict[str, str]:
        """Parameter and buffer names of `model` that are placeholders -> checkpoint keys."""
        named = [*model.named_parameters(), *model.named_buffers()]
        found = {name: self.key_of(tensor) for name, tensor in named}
        return {name: key for name, key in found.items() if key is not None}

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows `start:stop` of a checkpoint tensor (all of it by default), read from disk."""
        with safe_open(str(self.files[key]), framework="pt") as handle:
            rows = handle.get_slice(key)
            tensor = rows[start:stop] if rows.get_shape() else handle.get_tensor(key)
        return tensor.to(self.load_dtypes[key])

    def read_flat(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Elements `start:stop` of a checkpoint tensor flattened (ZeRO-3's partitions), reading
        only the rows that hold them."""
        shape = self.shapes[key]
        row = max(1, math.prod(shape[1:])) if shape else 1
        first, last = start // row, -(-stop // row)
        rows = self.read(key, first, last) if shape else self.read(key)
        return rows.reshape(-1)[start - first * row : stop - first * row]

    def realise(self, module: torch.nn.Module) -> None:
        """Read `module`'s placeholder parameters in full (for code that reads or copies them)."""
        for param in module.parameters():
            key = self.key_of(param)
            if key is not None:
                param.data = self.read(key).to(param.dtype)


_PENDING: weakref.WeakKeyDictionary[torch.nn.Module, DeferredWeights] = weakref.WeakKeyDictionary()


def checkpoint_files(path: str) -> dict[str, Path] | None:
    """Checkpoint key -> safetensors file of a local model folder; None if it has none."""
    folder = Path(path)
    if (folder / SINGLE_FILE).is_file():
        with safe_open(str(folder / SINGLE_FILE), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), folder / SINGLE_FILE)
    if (folder / INDEX_FILE).is_file():
        weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    return None


def placeholder_state_dict(weights: DeferredWeights, dtype: torch.dtype | None) -> dict[str, Any]:
    """A placeholder per checkpoint tensor, in the dtype the loaded model will hold."""
    state: dict[str, Any] = {}
    by_file: dict[Path, list[str]] = {}
    for key, file in weights.files.items():
        by_file.setdefault(file, []).append(key)
    for file, keys in by_file.items():
        with safe_open(str(file), framework="pt") as handle:
            for key in keys:
                rows = handle.get_slice(key)
                stored = DTYPES[rows.get_dtype()]
                target = dtype if dtype is not None and stored.is_floating_point else stored
                state[key] = weights.placeholder(key, list(rows.get_shape()), target)
    return state


def load_deferred(
    auto_class: Any, name: str, config: Any, dtype: torch.dtype | None
) -> torch.nn.Module | None:
    """`from_pretrained` with placeholders for every pre-trained tensor (None: not possible here).

    Newly initialised weights (the head) and buffers come out real and identical to an ordinary
    load with the same seed.
    """
    files = checkpoint_files(name)
    if files is None:
        return None
    model_class = concrete_class(auto_class, config)
    if model_class is None:
        return None
    weights = DeferredWeights(files)
    options = {"dtype": dtype} if dtype is not None else {}
    model = model_class.from_pretrained(
        None, config=config, state_dict=placeholder_state_dict(weights, dtype), **options
    )
    check_placeholders(model, weights, name)
    _PENDING[model] = weights
    return model


def concrete_class(auto_class: Any, config: Any) -> Any:
    """The model class an `Auto*` class picks for `config` (None: remote code, not mapped)."""
    mapping = getattr(auto_class, "_model_mapping", None)
    if mapping is None:
        return None
    try:
        model_class = mapping[type(config)]
    except KeyError:
        return None
    return model_class[0] if isinstance(model_class, (list, tuple)) else model_class


def check_placeholders(model: torch.nn.Module, weights: DeferredWeights, name: str) -> None:
    """Refuse a tensor that lost its link to the checkpoint: one transformers converted while
    loading (cast, fused, split), or a copy of a placeholder (it holds the placeholder's NaN).
    """
    for param_name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        key = weights.key_of(tensor)
        reshaped = key is not None and tuple(tensor.shape) != weights.shapes[key]  # split, fused
        copied = key is None and tensor.is_floating_point() and bool(tensor.isnan().any())
        if reshaped or copied:
            raise NluftError(
                f"model.name_or_path: {name!r}: {param_name} is converted or copied while loading, "
                "so its weights cannot be read per shard; set strategy.fsdp_meta_init=false "
                "(fsdp) or strategy.zero3_lazy_init=false (deepspeed)"
            )


def attach(model: torch.nn.Module, weights: DeferredWeights) -> None:
    """Record that `model` (a wrapper of the loaded backbone) has placeholders from `weights`."""
    _PENDING[model] = weights


def deferred_weights(model: torch.nn.Module) -> DeferredWeights | None:
    """The placeholder record of a model built with `lazy=True`; None for an ordinary model."""
    return _PENDING.get(model)
