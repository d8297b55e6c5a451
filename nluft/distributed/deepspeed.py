"""`strategy.name: deepspeed`: ZeRO 0-3, CPU offload, bf16/fp16, accumulation and clipping.

The only module that imports deepspeed, and only when this backend is built.

Checkpoints are DeepSpeed's own sharded files (`deepspeed/` in the checkpoint directory) plus
`deepspeed_meta.json`. Resuming ZeRO 1-3 on another world size converts them to a DeepSpeed
universal checkpoint (`ds_to_universal`, in a temporary `.universal-step-N/` beside them) and loads
that: model weights, fp32 master weights, AdamW moments and the schedule all carry over (after
two repairs of DeepSpeed 0.19.8's ZeRO-3 loader: per-group weight decay, per-group step counters).
ZeRO-0 files hold the full state and load on any world size as they are.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from nluft.config import Config, Plan
from nluft.distributed.base import StepResult, model_state_bytes, overflow_is_fault
from nluft.distributed.deepspeed_config import resolve_deepspeed_config, zero_stage
from nluft.distributed.env import DistEnv
from nluft.distributed.group import GroupCollectives, ensure_process_group
from nluft.errors import NluftError
from nluft.models.build import defers_loading
from nluft.models.lazy import DeferredWeights, deferred_weights
from nluft.optim import build_scheduler, param_groups

TAG = "deepspeed"
META = "deepspeed_meta.json"


def skip_shm_comm_build() -> None:
    """DeepSpeed JIT-builds a shared-memory op (minutes) used only for inference all-reduce."""
    module = importlib.import_module("deepspeed.comm.torch")
    module.build_shm_op = lambda: None  # type: ignore[attr-defined]


def bound_zero_group(timeout_s: float) -> None:
    """Give the group ZeRO's collectives run on the timeout of strategy.timeout_s.

    DeepSpeed runs them on its own clone of the world group, made with `new_group(ranks)`, which
    takes torch's default timeout (30 min), not the default group's. Made here first (every rank
    calls this at the same point), DeepSpeed reuses it.
    """
    from deepspeed.utils import groups

    if groups._WORLD_GROUP is None:
        ranks = list(range(dist.get_world_size()))
        timeout = datetime.timedelta(seconds=timeout_s)
        groups._WORLD_GROUP = dist.new_group(ranks=ranks, timeout=timeout)


class DeepSpeedStrategy(GroupCollectives):
    """`strategy.name: deepspeed`."""

    name = "deepspeed"

    def __init__(self, cfg: Config, env: DistEnv) -> None:
        super().__init__(cfg, env)
        self.stage = zero_stage(cfg)
        self.ds_config = resolve_deepspeed_config(cfg, env.world_size, self.device.type)
        self.hf_ds_config: Any = None
        if env.is_distributed:
            self.init_group()

    def init_group(self) -> None:
        """The process group, then DeepSpeed's communication layer on top of it."""
        if not (self.env.is_distributed or dist.is_torchelastic_launched()):
            # DeepSpeed needs a launcher's environment (LOCAL_RANK...), even for one process.
            raise NluftError(
                "strategy.name: deepspeed runs under a launcher, even for one process: "
                "python -m torch.distributed.run --nproc_per_node N -m nluft train ..."
            )
        ensure_process_group(self.device, self.cfg.strategy.timeout_s, self.env.is_distributed)
        import deepspeed

        skip_shm_comm_build()
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        bound_zero_group(self.cfg.strategy.timeout_s)

    def describe(self) -> dict[str, Any]:
        return {"deepspeed_config": self.ds_config}

    @functools.cached_property
    def defers_weights(self) -> bool:
        """ZeRO-3 builds with placeholders and `setup` reads each rank's partitions (unless
        `strategy.zero3_lazy_init: false`, or the model cannot be loaded that way)."""
        lazy = self.stage == 3 and self.cfg.strategy.zero3_lazy_init is not False
        return lazy and defers_loading(self.cfg.model, self.cfg.peft)

    def model_init_context(self) -> contextlib.AbstractContextManager[Any]:
        """ZeRO-3 partitions parameters while `from_pretrained` loads them (rank 0 reads the
        whole model); with placeholders (`defers_weights`) `setup` partitions instead."""
        self.init_group()
        if self.stage == 3 and not self.defers_weights:
            self.register_zero3()
        return contextlib.nullcontext()

    def register_zero3(self) -> None:
        """Tell transformers (and peft) that parameters are ZeRO-3 partitioned."""
        from transformers.integrations import HfDeepSpeedConfig

        # transformers holds only a weak reference: keep it alive for the whole run.
        self.hf_ds_config = HfDeepSpeedConfig(self.ds_config)

    def setup(self, model: torch.nn.Module, plan: Plan) -> None:
        import deepspeed

        self.init_group()
        weights = deferred_weights(model)
        if weights is not None:
            partition_deferred(model, weights, self.ds_config)
            self.register_zero3()  # built as a plain model; partitioned from here on
        elif self.stage != 3:
            model = model.to(self.device)
        train = self.cfg.train
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=param_groups(model, train),
            config=self.ds_config,
            lr_scheduler=lambda optimizer: build_scheduler(optimizer, train, plan),
        )
        self.model = self.engine
        if self.stage == 0 and not (self.ds_config["bf16"]["enabled"] or self.precision == "fp16"):
            guard_plain_optimizer(self.engine)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        # The engine already holds the model in bf16/fp16; no autocast on top.
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # The loop already divided the loss by the accumulation steps.
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> StepResult:
        """Reduce, clip, update and zero in the engine; it also advances the schedule."""
        scale = float(getattr(self.engine.optimizer, "loss_scale", 0.0) or 0.0)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = None if norm is None else float(norm)
        if not getattr(self.engine, "_step_applied", True):
            # NaN/Inf gradients (ZeRO 1-3, bf16), or an fp16 loss-scaler overflow. DeepSpeed does
            # not advance the schedule on a skip; the loop's step count does.
            self.engine.lr_scheduler.step()
            fault = self.precision != "fp16" or overflow_is_fault(scale)
            return StepResult(norm, skipped=True, fault=fault)
        if norm is not None and not math.isfinite(norm):  # ZeRO-0 fp32: guard_plain_optimizer
            return StepResult(norm, skipped=True, fault=True)
        return StepResult(norm)

    @property
    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    def unwrapped(self) -> torch.nn.Module:
        return self.engine.module

    # --- state -------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        # With PEFT the frozen backbone is the pre-trained one: not saved again.
        self.engine.save_checkpoint(
            str(path), tag=TAG, exclude_frozen_parameters=self.trainable_only
        )
        if self.env.is_main:
            meta = {"world_size": self.env.world_size, "zero_stage": self.stage}
            (path / META).write_text(json.dumps(meta))

    def load(self, path: Path, weights_only: bool = False) -> None:
        meta = json.loads((path / META).read_text())
        universal = meta["world_size"] != self.env.world_size and meta["zero_stage"] > 0
        load_dir = self.universal_checkpoint(path) if universal else path
        # The engine reads this flag from its config when loading; set only for this load.
        config = self.engine._config
        config.load_universal_checkpoint = universal
        decay = [group["weight_decay"] for group in self.torch_param_groups()]
        try:
            self.engine.load_checkpoint(
                str(load_dir),
                tag=TAG,
                load_module_strict=not self.trainable_only,
                load_module_only=weights_only,
                load_optimizer_states=not weights_only,
                load_lr_scheduler_states=not weights_only,
            )
        finally:
            config.load_universal_checkpoint = False
        # ZeRO-3's universal loader copies the first param group's hyperparameters onto every
        # group (DeepSpeed 0.19.8), so biases and norms would get weight decay after a resume on
        # another world size: each group gets its own back.
        for group, weight_decay in zip(self.torch_param_groups(), decay, strict=True):
            group["weight_decay"] = weight_decay
        separate_step_counters(self.engine.optimizer)
        if universal:
            self.barrier()
            if self.env.is_main:
                shutil.rmtree(load_dir, ignore_errors=True)

    def torch_param_groups(self) -> list[dict[str, Any]]:
        """The param groups of the torch optimizer inside DeepSpeed's ZeRO wrapper."""
        optimizer = self.engine.optimizer
        return list(getattr(optimizer, "optimizer", optimizer).param_groups)

    def universal_checkpoint(self, path: Path) -> Path:
        """Convert a checkpoint from another world size to DeepSpeed's universal format."""
        out = path.parent / f".universal-{path.name}"
        if self.env.is_main:
            from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

            shutil.rmtree(out, ignore_errors=True)
            args = SimpleNamespace(
                input_folder=str(path / TAG),
                output_folder=str(out / TAG),
                num_extract_workers=1,
                num_merge_workers=1,
                keep_temp_folder=False,
                strict=True,
                inject_missing_state=True,  # no Megatron-style info in a plain HF model
            )
            ds_to_universal(args)
        self.barrier()
        return out

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0; ZeRO-3 gathers one parameter at a time, no optimizer state."""
        if self.stage != 3:
            if not self.env.is_main:
                return None
            return {k: to_export(v) for k, v in self.unwrapped().state_dict().items()}
        import deepspeed

        state: dict[str, torch.Tensor] = {}
        for name, param in self.unwrapped().named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if self.env.is_main:
                    state[name] = param.detach().float().cpu().clone()
        if not self.env.is_main:
            return None
        for name, buffer in self.unwrapped().named_buffers():
            state[name] = buffer.detach().cpu().clone()
        return state

    # --- memory accounting -------------------------------------------------------------------

    def local_numel(self, param: torch.nn.Parameter) -> int:
        ds_tensor = getattr(param, "ds_tensor", None)
        return int(ds_tensor.numel()) if ds_tensor is not None else param.numel()

    def memory_report(self) -> dict[str, int]:
        """ZeRO-1 shards optimizer state, ZeRO-2 also gradients, ZeRO-3 also parameters."""
        world, stage = self.env.world_size, self.stage
        params = grads = trainable = 0
        for param in self.unwrapped().parameters():
            numel = self.local_numel(param)
            params += numel * param.element_size()
            if param.requires_grad:
                trainable += int(getattr(param, "ds_numel", param.numel()))
                grads += numel * param.element_size() // (world if stage == 2 else 1)
        optimizer_numel = trainable // world if stage >= 1 else trainable
        # AdamW moments in fp32, plus the fp32 master copy ZeRO (or 16-bit training) keeps.
        sixteen_bit = self.ds_config["bf16"]["enabled"] or self.ds_config["fp16"]["enabled"]
        optimizer = optimizer_numel * (8 + (4 if stage >= 1 or sixteen_bit else 0))
        return model_state_bytes(params, grads, optimizer)


def partition_deferred(model: torch.nn.Module, weights: DeferredWeights, ds_config: Any) -> None:
    """ZeRO-3 partitioned initialisation of a placeholder model, one parameter at a time.

    Each parameter becomes a ZeRO-3 parameter as the ordinary ZeRO-3 load makes it (same dtype,
    device, persistence), without `zero.Init`'s broadcast: every rank made the same new tensors
    (head, adapters, grown rows) from the same seed, and each rank copies only its own partition
    of a pre-trained tensor from the safetensors file (`DeferredWeights.read_flat`). ZeRO-3
    splits the flattened parameter, padded to a multiple of the world size, into equal
    partitions. A rank's peak is its partitions plus the rows of one tensor in flight, never the
    whole model.
    """
    import deepspeed

    init = deepspeed.zero.Init(config_dict_or_path=ds_config)  # not entered: converts by hand
    pending = weights.pending(model)
    adapters = hasattr(model, "peft_config")
    with torch.no_grad():
        for name, param in model.named_parameters():
            # As in the ordinary load: zero.Init casts what from_pretrained makes to the
            # training dtype; peft's trainable tensors (adapters, copied modules) keep theirs.
            dtype = param.dtype if adapters and param.requires_grad else init.dtype
            partition_one(init, param, pending.get(name), weights, dtype)
        for name, buffer in model.named_buffers():
            key = pending.get(name)
            source = buffer if key is None else weights.read(key)
            buffer.data = source.to(init.local_device, buffer.dtype)
    weights.placeholders.clear()  # none left
    weights.bases.clear()


def partition_one(
    init: Any, param: Any, key: str | None, weights: DeferredWeights, dtype: torch.dtype
) -> None:
    """Make `param` a ZeRO-3 parameter in `dtype`; a placeholder's partition is read from the
    checkpoint."""
    dtype = dtype if param.is_floating_point() else param.dtype
    if key is not None:  # uninitialised: DeepSpeed touches only this rank's partition of it
        param.data = torch.empty(param.shape, dtype=dtype, device=init.local_device)
    else:
        param.data = param.data.to(init.local_device, dtype)
    init._convert_to_deepspeed_param(param)
    param.partition()
    if key is not None:
        part = param.ds_tensor.numel()
        start = min(part * param.ds_zero_partition_rank, param.ds_numel)
        stop = min(start + part, param.ds_numel)
        param.ds_tensor[: stop - start].copy_(weights.read_flat(key, start, stop).to(dtype))


def separate_step_counters(optimizer: Any) -> None:
    """Give each AdamW state its own `step` tensor after a load.

    ZeRO-3's universal loader (DeepSpeed 0.19.8, stage3.py
    `load_hp_checkpoint_state_from_checkpoint_dir_stage3`) assigns ONE step tensor object to the
    state of every sub-group (one per param group here). torch's AdamW increments
    `state["step"]` in place, once per sub-group, so after the resume the shared counter advanced
    by the number of sub-groups per optimizer step (2 with nluft's decay/no-decay groups: step 16
    instead of 10 after 6 steps), and Adam's bias correction, 1 - beta**step, moved the run off
    the uninterrupted one. See benchmarks/zero_resume_probe.py.
    """
    base = getattr(optimizer, "optimizer", optimizer)
    seen: set[int] = set()
    for state in base.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.clone()
            seen.add(id(step))


def to_export(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy; 16-bit floating weights are saved as fp32 like the single-process export."""
    tensor = tensor.detach().cpu()
    return tensor.float() if tensor.is_floating_point() else tensor


def guard_plain_optimizer(engine: Any) -> None:
    """Make ZeRO-0 in fp32 report its gradient norm and skip a NaN/Inf update, as every other
    configuration does.

    There DeepSpeed steps a plain torch optimizer: it keeps no norm (`get_global_grad_norm()` is
    None) and applies non-finite gradients, which turns every weight into NaN (ZeRO 1-3 and
    bf16 check the reduced gradients and skip such a step themselves). The engine copies an
    optimizer's `_global_grad_norm` after each step: measure it on the reduced gradients, before
    clipping when the engine clips; a non-finite norm drops the gradients, so AdamW leaves every
    parameter, its moments and its step count as they were.
    """
    optimizer = engine.optimizer
    clip = engine.clip_fp32_gradients
    measured = [False]

    def finite_norm() -> bool:
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        optimizer._global_grad_norm, measured[0] = norm, True
        if not math.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
        return math.isfinite(norm)

    def clip_finite() -> None:
        if finite_norm():
            clip()

    def measure_unclipped(*_: Any) -> None:
        if not measured[0]:
            finite_norm()
        measured[0] = False

    engine.clip_fp32_gradients = clip_finite
    optimizer.register_step_pre_hook(measure_unclipped)


def read_weights(checkpoint: Path, precision: str) -> dict[str, torch.Tensor]:
    """Full model weights from a DeepSpeed checkpoint, read by one plain process (no group).

    ZeRO 0-2 keep the whole module in rank 0's `mp_rank_00_model_states.pt`, exactly what the
    end-of-training export gathers; ZeRO-3 shards it, so its fp32 master weights are merged
    (`get_fp32_state_dict_from_zero_checkpoint`) and rounded to the training precision as the
    live parameters were. DeepSpeed's files are pickles (weights_only=False): see SECURITY.md.
    """
    meta = json.loads((checkpoint / META).read_text())
    if meta["zero_stage"] < 3:
        states = torch.load(
            checkpoint / TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
        )
        return {k: to_export(v) for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    skip_shm_comm_build()
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=TAG)
    if precision == "fp32":
        return dict(state)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return {k: v.to(dtype).float() if v.is_floating_point() else v for k, v in state.items()}
