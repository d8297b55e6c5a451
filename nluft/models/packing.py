"""Padding-free packed batches (`data.packing: true`): the backbone runs on one row of real tokens.

The loop, the heads and the losses still see the padded micro-batch (batch, length): hooks on the
backbone (the transformer under the task head) pack its inputs on the way in and unpack its
hidden states on the way out. Inside, the real tokens of every sequence are concatenated into one
row, position ids restart at 0 for each sequence, and attention stays inside each sequence:

- sdpa (transformers' default): `PACKED_SDPA`, an attention function registered with
  transformers: the linear layers run on the packed real tokens only, and attention alone is
  laid out per sequence for one batched sdpa call with a key mask (varlen attention without a
  varlen kernel; no (total x total) mask); calls that are not packed go to sdpa unchanged;
- flash attention: the varlen kwargs `cu_seq_lens_q/k` and `max_length_q/k` (what
  `DataCollatorWithFlattening` gives it);
- eager and flex: for encoders (BERT) a block-diagonal mask from transformers' own
  `create_bidirectional_mask`; for decoders (Llama, Qwen2) only the packed position ids, from
  which transformers builds the block-diagonal causal mask (`find_packed_sequence_indices`).

The task heads then read padded hidden states as in a padded run: token and span heads per
position, Llama/Qwen2's score on each sequence's last real token (found from the padded input
ids), relation extraction's entity markers, and BERT's pooler on each sequence's first token (a
pre-hook hands the pooler the first token of every sequence). Because all of it runs inside the
model's forward, DDP sees an ordinary forward. Padding rows cost nothing in the transformer
layers; the head's linear layer still runs over the padded slots (cheap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nluft.config import Config
from nluft.errors import NluftError
from nluft.models.build import resolve_model_path

# Backbones whose packed forward was checked against the padded one (tests/test_packing.py):
# absolute position ids from 0 (BERT) or rotary ones (Llama, Qwen2), all taking `position_ids`.
ENCODERS = ("bert",)
DECODERS = ("llama", "qwen2")
STRATEGIES = ("single", "ddp")
FLASH = ("flash_attention_2", "flash_attention_3")
PACKED_SDPA = "nluft_packed_sdpa"


def check_packing(cfg: Config) -> None:
    """Refuse up front (also on --dry-run) what a packed run cannot do exactly."""
    if not cfg.data.packing:
        return
    if cfg.strategy.name not in STRATEGIES:
        raise NluftError(
            f"data.packing: not supported with strategy.name={cfg.strategy.name} (packed batches "
            f"run on {' and '.join(STRATEGIES)}); set data.packing=false or strategy.name=ddp"
        )
    if getattr(cfg.train, "torch_compile", False):  # the hooks' data-dependent shapes: unverified
        raise NluftError(
            "data.packing: not supported with train.torch_compile; set one of them to false"
        )
    if cfg.distill.teacher is not None:
        raise NluftError(
            "data.packing: not supported with distillation (distill.teacher); "
            "set data.packing=false"
        )
    model_type = checkpoint_model_type(cfg)
    if model_type is not None and model_type not in (*ENCODERS, *DECODERS):
        raise NluftError(
            f"data.packing: model type {model_type!r} is not supported (packed batches run on "
            f"{', '.join((*ENCODERS, *DECODERS))} backbones); set data.packing=false"
        )


def checkpoint_model_type(cfg: Config) -> str | None:
    """The checkpoint's config.json `model_type`; None when it cannot be read (the model loader
    then names the path)."""
    import transformers

    name = resolve_model_path(cfg.model.name_or_path)
    options = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(name, **options)
    except (OSError, ValueError):
        return None
    return getattr(config, "model_type", None)


@dataclass(frozen=True)
class Pack:
    """Where the real tokens of a right-padded (batch, length) micro-batch go in the packed row."""

    shape: tuple[int, int]
    index: torch.Tensor  # flat (batch * length) positions of the real tokens, in order
    positions: torch.Tensor  # each real token's position in its own sequence
    starts: torch.Tensor  # packed position of each sequence's first token
    cu_seqlens: torch.Tensor  # int32 (batch + 1,): sequence boundaries in the packed row
    max_length: int

    @property
    def sequence_ids(self) -> torch.Tensor:
        """(total,) which sequence each packed token belongs to."""
        lengths = self.cu_seqlens.diff().long()
        return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


def plan_pack(attention_mask: torch.Tensor) -> Pack:
    """The packing of a right-padded batch (every row: its real tokens, then padding)."""
    batch, length = attention_mask.shape
    lengths = attention_mask.sum(dim=1)
    columns = torch.arange(length, device=attention_mask.device)
    real = columns[None, :] < lengths[:, None]
    if not torch.equal(real, attention_mask.bool()):
        raise NluftError("data.packing: needs right-padded batches (real tokens first in each row)")
    if int(lengths.min()) == 0:
        raise NluftError("data.packing: a sequence without tokens cannot be packed")
    cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32, device=attention_mask.device)
    cu_seqlens[1:] = lengths.cumsum(0)
    return Pack(
        shape=(batch, length),
        index=real.flatten().nonzero().squeeze(1),
        positions=columns.expand(batch, length)[real],
        starts=cu_seqlens[:-1].long(),
        cu_seqlens=cu_seqlens,
        max_length=int(lengths.max()),
    )


def pack_rows(values: torch.Tensor, pack: Pack) -> torch.Tensor:
    """(batch, length, ...) -> (1, total, ...): the real tokens of every row, one after another."""
    return values.reshape(-1, *values.shape[2:])[pack.index][None]


def unpack_rows(packed: torch.Tensor, pack: Pack) -> torch.Tensor:
    """(1, total, ...) -> (batch, length, ...), zeros at padding (heads ignore those slots)."""
    batch, length = pack.shape
    out = packed.new_zeros((batch * length, *packed.shape[2:]))
    out = out.index_copy(0, pack.index, packed[0])
    return out.view(batch, length, *packed.shape[2:])


class PackedBackbone:
    """The hooks that make one backbone module run packed (see the module docstring)."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        self.backbone: Any = backbone
        config: Any = backbone.config
        self.config = config
        self.causal = config.model_type in DECODERS
        self.pack: Pack | None = None

    def install(self) -> None:
        self.backbone.register_forward_pre_hook(self.before, with_kwargs=True)
        self.backbone.register_forward_hook(self.after, with_kwargs=True)
        pooler = getattr(self.backbone, "pooler", None)
        if pooler is not None:
            pooler.register_forward_pre_hook(self.first_tokens)

    def before(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Pack the inputs of a padded call: input ids, token types, positions, attention."""
        kwargs = dict(kwargs)
        if args:  # heads pass input_ids positionally
            kwargs["input_ids"], args = args[0], args[1:]
        input_ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if args or input_ids is None or mask is None or mask.dim() != 2:
            self.pack = None  # not a padded batch of ids: run as the model would
            return None
        pack = plan_pack(mask)
        kwargs["input_ids"] = pack_rows(input_ids, pack)
        if kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = pack_rows(kwargs["token_type_ids"], pack)
        positions = kwargs.get("position_ids")
        kwargs["position_ids"] = (
            pack.positions[None]
            if positions is None
            else pack_rows(positions.expand(*pack.shape), pack)
        )
        implementation = self.config._attn_implementation
        varlen = implementation in (*FLASH, PACKED_SDPA)
        kwargs["attention_mask"] = None if self.causal or varlen else self.packed_mask(pack)
        if self.causal:
            kwargs["use_cache"] = False  # packed sequences are found only without a cache
        if varlen:
            kwargs.update(
                cu_seq_lens_q=pack.cu_seqlens,
                cu_seq_lens_k=pack.cu_seqlens,
                max_length_q=pack.max_length,
                max_length_k=pack.max_length,
            )
        self.pack = pack
        return args, kwargs

    def packed_mask(self, pack: Pack) -> Any:
        """Attention within each sequence, in the form the attention implementation takes."""
        from transformers.masking_utils import (
            create_bidirectional_mask,
            packed_sequence_mask_function,
        )

        embeds_like = torch.empty(
            (1, int(pack.cu_seqlens[-1]), 1), dtype=self.backbone.dtype, device=pack.index.device
        )
        return create_bidirectional_mask(
            config=self.config,
            inputs_embeds=embeds_like,
            attention_mask=None,
            and_mask_function=packed_sequence_mask_function(pack.sequence_ids[None]),
        )

    def first_tokens(self, module: torch.nn.Module, args: tuple[Any, ...]) -> Any:
        """BERT's pooler reads position 0 of each row: give it each sequence's first token."""
        if self.pack is None:
            return None
        hidden = args[0]
        return (hidden[0, self.pack.starts][:, None, :], *args[1:])

    def after(
        self,
        module: torch.nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> Any:
        """Hidden states back in the padded (batch, length, hidden) layout the heads expect."""
        pack, self.pack = self.pack, None
        if pack is None:
            return output
        if isinstance(output, tuple):
            return (unpack_rows(output[0], pack), *output[1:])
        output.last_hidden_state = unpack_rows(output.last_hidden_state, pack)
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = tuple(unpack_rows(h, pack) for h in output.hidden_states)
        return output


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a packed row; any other call: transformers' sdpa.

    Query, key and value are (1, heads, total, head_dim), `cu_seq_lens_q` bounds the sequences.
    Only attention goes back to a (sequences, heads, longest, head_dim) layout, for one batched
    sdpa call with a key mask: the linear layers around it ran on real tokens only. (One sdpa
    call per sequence costs more on a CPU: its per-call overhead, and slicing's backward, which
    adds a full-size gradient per slice.)
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    lengths = bounds.diff().long()
    longest = int(kwargs["max_length_q"])
    sequence = torch.repeat_interleave(torch.arange(len(lengths), device=query.device), lengths)
    slot = sequence * longest + torch.arange(query.shape[2], device=query.device)
    slot = slot - bounds[:-1].long()[sequence]  # each token's place in its sequence's row

    def rows(packed: torch.Tensor) -> torch.Tensor:  # (1, h, total, d) -> (n, h, longest, d)
        tokens = packed[0].transpose(0, 1)
        out = tokens.new_zeros((len(lengths) * longest, *tokens.shape[1:]))
        out = out.index_copy(0, slot, tokens)
        return out.view(len(lengths), longest, *tokens.shape[1:]).transpose(1, 2)

    columns = torch.arange(longest, device=query.device)
    mask = (columns[None, :] < lengths[:, None])[:, None, None, :]  # real keys only
    if causal:
        mask = mask & (columns[None, :] <= columns[:, None])[None, None]
    out = torch.nn.functional.scaled_dot_product_attention(
        rows(query), rows(key), rows(value), attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    heads, dim = out.shape[1], out.shape[3]
    return out.transpose(1, 2).reshape(-1, heads, dim)[slot][None], None


def register_packed_sdpa() -> None:
    """Make `PACKED_SDPA` an attention implementation transformers knows (masks as for sdpa)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def packed_sdpa_mask(**kwargs: Any) -> Any:
        # A packed call has no 2-D mask: each sequence's own sdpa call needs none (a decoder's
        # block-diagonal causal mask from its position ids would be total x total, unused).
        if kwargs.get("attention_mask") is None:
            return None
        return sdpa_mask(**kwargs)

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, packed_sdpa_mask)


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer under the task head (through a PEFT wrapper, if any)."""
    wrapper: Any = model
    inner: Any = wrapper.get_base_model() if hasattr(wrapper, "get_base_model") else wrapper
    backbone = inner.base_model
    if backbone is inner:
        raise NluftError(f"data.packing: {type(inner).__name__} has no backbone under a head")
    return backbone


def enable_packing(model: torch.nn.Module) -> PackedBackbone:
    """Make `model`'s backbone run packed, in training and evaluation; returns the hooks' owner."""
    backbone = backbone_of(model)
    model_type = getattr(backbone.config, "model_type", None)
    if model_type not in (*ENCODERS, *DECODERS):
        raise NluftError(f"data.packing: model type {model_type!r} is not supported")
    config: Any = backbone.config
    if config._attn_implementation == "sdpa":  # the default: per-sequence sdpa, no mask
        register_packed_sdpa()
        config._attn_implementation = PACKED_SDPA  # runtime only: config.json does not keep it
    packed = PackedBackbone(backbone)
    packed.install()
    return packed
