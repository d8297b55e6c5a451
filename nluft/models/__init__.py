"""Models: backbone + task head (build.py), nluft's own heads (heads.py), LoRA adapters (peft.py).

No parallel code here: strategies wrap what `build_model` returns.
"""

from nluft.models.build import (
    build_model,
    build_tokenizer,
    count_parameters,
    first_line,
    is_byte_level,
    load_exported,
    load_tokenizer,
    resolve_model_path,
)
from nluft.models.heads import EntityMarkerModel, marker_states

__all__ = [
    "EntityMarkerModel",
    "build_model",
    "build_tokenizer",
    "count_parameters",
    "first_line",
    "is_byte_level",
    "load_exported",
    "load_tokenizer",
    "marker_states",
    "resolve_model_path",
]
