"""Per-rank check of FSDP2 meta-device initialisation against an ordinary single-process build.

    python -m torch.distributed.run --nproc-per-node 2 ... tests/meta_init_check.py CASES OUT

CASES (JSON) lists {"name", "config", "overrides"} (the overrides select strategy.name=fsdp, or
deepspeed with zero_stage=3). For each case every rank builds the model as `nluft train` does
(placeholders, then `FSDPStrategy.setup` shards and reads its rows, or `DeepSpeedStrategy.setup`
partitions and reads each rank's partitions); rank 0 gathers the full state dict and compares
it, tensor by tensor, with `build_model` run the ordinary way in one process from the same seed,
and with the pre-trained checkpoint file itself. OUT (JSON) gets one record per case.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file
from transformers.integrations.deepspeed import unset_hf_deepspeed_config


def build(cfg: Any, strategy: Any) -> tuple[Any, dict[str, str]]:
    """(model, its placeholders) as train.main builds it; with a strategy, set up by it."""
    from nluft.config import build_plan
    from nluft.data import build_data
    from nluft.models import build_model, build_tokenizer
    from nluft.models.lazy import deferred_weights
    from nluft.tasks import build_task

    task = build_task(cfg)
    transformers.set_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg.model, task)
    if strategy is None:  # the reference: one plain process
        data = build_data(cfg, task, tokenizer, True, lambda: None)
        return build_model(cfg.model, task, tokenizer, cfg.peft), {}
    data = build_data(cfg, task, tokenizer, strategy.env.is_main, strategy.barrier)
    with strategy.model_init_context():  # deepspeed: the group (and, not lazy, zero.Init)
        model = build_model(cfg.model, task, tokenizer, cfg.peft, lazy=strategy.defers_weights)
    weights = deferred_weights(model)
    pending = weights.pending(model) if weights is not None else {}
    strategy.setup(model, build_plan(cfg, strategy.env.world_size, len(data.features["train"])))
    return model, pending


def check(case: dict[str, Any]) -> dict[str, Any] | None:
    from nluft.config import load_config
    from nluft.distributed import build_strategy, read_dist_env
    from nluft.models import resolve_model_path

    cfg = load_config(case["config"], case["overrides"])
    strategy = build_strategy(cfg, read_dist_env())
    model_dir = Path(resolve_model_path(cfg.model.name_or_path))
    checkpoint: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):  # one file, or shards + an index
        checkpoint.update(load_file(str(file)))
    keys = set(checkpoint)
    model, pending = build(cfg, strategy)
    named = [name for name, _ in [*model.named_parameters(), *model.named_buffers()]]
    # Model tensors with pre-trained values that were read in full before sharding.
    read_early = sorted(n for n in named if checkpoint_key(n, keys) and n not in pending)
    rng_sharded = torch.get_rng_state()
    local = sum(strategy.local_numel(p) for p in strategy.unwrapped().parameters())
    total = sum(getattr(p, "ds_numel", p.numel()) for p in strategy.unwrapped().parameters())
    sharded = strategy.export_state_dict()
    strategy.barrier()
    unset_hf_deepspeed_config()  # the reference below is an ordinary build
    ordinary = ordinary_zero3(case) if case.get("oracle") == "ordinary-zero3" else None
    if sharded is None:
        return None
    # Non-persistent buffers (position_ids, token_type_ids) are in no state dict; FSDP2 leaves
    # them whole on every rank.
    buffers = dict(strategy.unwrapped().named_buffers())
    dtypes = partition_dtypes(strategy)
    if ordinary is None:
        reference, _ = build(cfg, None)
        expected_buffers = dict(reference.named_buffers())
        expected = reference.state_dict()
        rng_expected, expected_dtypes = torch.get_rng_state(), dtypes
    else:
        expected, expected_buffers, rng_expected, expected_dtypes = ordinary
    if cfg.strategy.name == "deepspeed":  # its export holds every buffer, as fp32 copies
        expected.update(expected_buffers)
    mismatched = sorted(
        k
        for k in set(expected) | set(sharded)
        if k not in expected
        or k not in sharded
        or expected[k].dtype != sharded[k].dtype
        or not torch.equal(expected[k], sharded[k].to(expected[k].device))
    ) + sorted(k for k in dtypes if dtypes[k] != expected_dtypes.get(k))
    from_checkpoint = {
        k: bool(torch.equal(checkpoint[c].to(v.dtype), v))
        for k, v in sharded.items()
        for c in [checkpoint_key(k, checkpoint)]
        if c is not None and checkpoint[c].shape == v.shape
    }
    return {
        "name": case["name"],
        "placeholders": len(pending),
        "read_early": read_early,
        "keys": len(sharded),
        "mismatched": mismatched,
        "rng_equal": bool(torch.equal(rng_sharded, rng_expected)),
        "buffers": sorted(buffers),
        "buffers_equal": buffers.keys() == expected_buffers.keys()
        and all(torch.equal(buffers[k], v) for k, v in expected_buffers.items()),
        "from_checkpoint": from_checkpoint,
        "local_fraction": local / total,
        "head": {k: float(v.float().std()) for k, v in sharded.items() if is_head(k)},
    }


def ordinary_zero3(case: dict[str, Any]) -> Any:
    """The same case loaded the ordinary ZeRO-3 way (rank 0 reads, zero.Init partitions): its
    export, buffers, random state after loading and parameter dtypes (rank 0; None elsewhere)."""
    from nluft.config import load_config
    from nluft.distributed import build_strategy, read_dist_env

    cfg = load_config(case["config"], [*case["overrides"], "strategy.zero3_lazy_init=false"])
    strategy = build_strategy(cfg, read_dist_env())
    build(cfg, strategy)
    rng = torch.get_rng_state()
    state = strategy.export_state_dict()
    strategy.barrier()
    unset_hf_deepspeed_config()
    buffers = dict(strategy.unwrapped().named_buffers())
    return None if state is None else (state, buffers, rng, partition_dtypes(strategy))


def partition_dtypes(strategy: Any) -> dict[str, str]:
    """The dtype each parameter is held in (a ZeRO-3 partition's; {} for other strategies)."""
    named = strategy.unwrapped().named_parameters()
    return {n: str(p.ds_tensor.dtype) for n, p in named if hasattr(p, "ds_tensor")}


def checkpoint_key(name: str, checkpoint: Any) -> str | None:
    """The checkpoint key of a model tensor (peft and head-model prefixes removed)."""
    name = name.replace("base_model.model.", "").replace(".base_layer", "")
    for candidate in (name, name.partition(".")[2]):
        if candidate in checkpoint:
            return candidate
    return None


def is_head(name: str) -> bool:
    return name.split(".")[0] in ("classifier", "score", "qa_outputs") and name.endswith("weight")


def main(cases_file: str, out_file: str) -> None:
    from nluft.cli import quiet_libraries

    quiet_libraries()
    results = [check(case) for case in json.loads(Path(cases_file).read_text())]
    if results and results[0] is not None:
        Path(out_file).write_text(json.dumps(results))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
