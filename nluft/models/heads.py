"""Task heads nluft defines itself (transformers' Auto* classes provide the others).

Relation extraction: any encoder + a classifier on the entity-start marker hidden states.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import transformers


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
        if getattr(self.encoder, "pooler", None) is not None and "add_pooling_layer" in (
            inspect.signature(type(self.encoder).__init__).parameters
        ):
            # The head reads marker states, never the pooled output: an unused pooler would fail
            # DDP's reduction ("parameters that were not used in producing loss").
            self.encoder.pooler = None
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
