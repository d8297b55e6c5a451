"""Dynamically quantised int8 exports for CPU inference (`nluft export RUN_DIR --quantize int8`).

Every `nn.Linear` gets int8 weights (per-tensor affine) and quantises its activations on the fly
(`torch.ao.quantization.quantize_dynamic`); embeddings, LayerNorm and the rest stay fp32. The
folder holds the Hugging Face config and tokenizer, the quantised state dict
(`quantized_model.pt`, int8 weights: the size on disk is the real one) and `quantization.json`;
`load_quantized` rebuilds the fp32 skeleton from the config, quantises it the same way and loads
the int8 weights, so `nluft eval`/`predict`/`bench-infer` take the folder like any export.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers

from nluft.errors import NluftError
from nluft.models import EntityMarkerModel

MARKER = "quantization.json"
WEIGHTS = "quantized_model.pt"
METHODS = ("int8",)
WEIGHT_FILES = (".safetensors", ".bin", ".pt")


def quantize_model(model: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantisation of every nn.Linear (in place on a CPU copy)."""
    with warnings.catch_warnings():
        # torch 2.13 flags torch.ao eager quantisation as deprecated in favour of torchao, which
        # is not a dependency here; the API is still shipped and tested by torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def is_quantized(export_dir: Path) -> bool:
    return (export_dir / MARKER).is_file()


def model_class(config: Any) -> Any:
    """The class that wrote the export, from config.json's `architectures`."""
    name = (getattr(config, "architectures", None) or [None])[0]
    if name == "EntityMarkerModel":
        return EntityMarkerModel
    cls = getattr(transformers, str(name), None)
    if cls is None:
        raise NluftError(f"quantize: unknown model class {name!r} in config.json")
    return cls


def write_quantized(export_dir: Path, out: Path, method: str = "int8") -> Path:
    """Quantise the fp32 export in `export_dir` into `out` (replaced atomically)."""
    if method not in METHODS:
        raise NluftError(f"--quantize: unknown method {method!r} (known: {', '.join(METHODS)})")
    config = transformers.AutoConfig.from_pretrained(str(export_dir))
    cls = model_class(config)
    if cls is EntityMarkerModel:
        model = EntityMarkerModel.from_export(export_dir)
    else:
        model = cls.from_pretrained(str(export_dir), use_safetensors=True)
    quantized = quantize_model(model)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in export_dir.iterdir():  # config and tokenizer files; not the fp32 weights
        if item.is_file() and not item.name.endswith(WEIGHT_FILES):
            shutil.copy2(item, tmp / item.name)
    torch.save(quantized.state_dict(), tmp / WEIGHTS)
    marker = {"method": method, "scheme": "dynamic, nn.Linear, qint8", "torch": torch.__version__}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_quantized(export_dir: Path) -> torch.nn.Module:
    """The int8 model of a quantised export, in eval mode on the CPU."""
    config = transformers.AutoConfig.from_pretrained(str(export_dir))
    cls = model_class(config)
    skeleton = EntityMarkerModel(config) if cls is EntityMarkerModel else cls(config)
    model = quantize_model(skeleton)
    with warnings.catch_warnings():  # packed int8 weights still use TypedStorage internally
        warnings.simplefilter("ignore", UserWarning)
        state = torch.load(export_dir / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
