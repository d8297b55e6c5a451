"""Probe: does a DeepSpeed ZeRO checkpoint resumed on another world size continue exactly?

An investigation script, not a test. It trains a tiny model (tied embedding/output weight, a
frozen layer, a layer norm and bias in a no-decay group, parameters whose sizes do not divide by
the world size) with plain DeepSpeed, saves after `--save-at` steps, and keeps training to
`--steps`. A second launch on another world size converts the checkpoint with `ds_to_universal`
(as nluft does), loads it with `load_universal_checkpoint`, and compares right after the load and
at the end: fp32 master weights, AdamW exp_avg/exp_avg_sq per parameter, every sub-group's AdamW
`step` counter (value and whether sub-groups share one tensor), the param groups' hyperparameters,
the lr schedule and the final weights. `--fix step decay` applies nluft's repairs after the load.

    torchrun --standalone --nproc_per_node 2 benchmarks/zero_resume_probe.py save --dir D
    torchrun --standalone --nproc_per_node 1 benchmarks/zero_resume_probe.py resume --dir D
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

GLOBAL_BATCH = 8
VOCAB, DIM, SEQ = 37, 10, 5


class Tiny(nn.Module):
    """Embedding tied to the output layer, a frozen layer, a norm; odd parameter sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.hidden = nn.Linear(DIM, 13)
        self.frozen = nn.Linear(13, DIM)
        self.frozen.requires_grad_(False)
        self.norm = nn.LayerNorm(DIM)
        self.out = nn.Linear(DIM, VOCAB)
        self.out.weight = self.embed.weight  # tied, as in language-model heads

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.frozen(torch.tanh(self.hidden(self.embed(ids)))))
        logits = self.out(h)
        return nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(1, 1).flatten())


def batch(step: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of the global batch of `step` (the same rows on any world size)."""
    ids = torch.randint(
        0, VOCAB, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(step)
    )
    share = GLOBAL_BATCH // world
    return ids[rank * share : (rank + 1) * share]


def build(stage: int, world: int) -> Any:
    import deepspeed

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # type: ignore[attr-defined]
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.manual_seed(0)
    model = Tiny()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if "weight" in n and "norm" not in n]
    no_decay = [p for n, p in named if not ("weight" in n and "norm" not in n)]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    config = {
        "train_batch_size": GLOBAL_BATCH,
        "train_micro_batch_size_per_gpu": GLOBAL_BATCH // world,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-2, "torch_adam": True}},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }

    def schedule(optimizer: Any) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 4))

    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=groups, config=config, lr_scheduler=schedule
    )
    return engine


def train(engine: Any, first: int, last: int) -> list[float]:
    rank, world = dist.get_rank(), dist.get_world_size()
    losses = []
    for step in range(first, last):
        loss = engine(batch(step, rank, world))
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    return losses


def snapshot(engine: Any) -> dict[str, Any]:
    """The full optimizer-side state, gathered (None on ranks other than 0)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    params: dict[str, dict[str, torch.Tensor]] = {}
    # ZeRO-1/2 link their moments to parameters lazily (not always after a load): weights only.
    keys = ["exp_avg", "exp_avg_sq"] if engine.zero_optimization_stage() == 3 else []
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            params[name] = {"fp32": safe_get_full_fp32_param(param).clone()}
            for key in keys:
                params[name][key] = safe_get_full_optimizer_state(param, key).clone()
    base = engine.optimizer.optimizer
    states = [base.state[p] for p in hp_params(engine)]
    steps = [s.get("step") for s in states]
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups]
    frozen = {
        n: p.detach().clone() for n, p in engine.module.named_parameters() if not p.requires_grad
    }
    snap = {
        "params": params,
        "steps": [float(s) if s is not None else None for s in steps],
        "step_tensors_shared": len({id(s) for s in steps}) < len(steps),
        "groups": hyper,
        "scheduler": engine.lr_scheduler.state_dict(),
        "lr": engine.get_lr(),
        "frozen_numel": {n: p.numel() for n, p in frozen.items()},
    }
    return snap if dist.get_rank() == 0 else {}


def hp_params(engine: Any) -> list[torch.Tensor]:
    """The fp32 tensors the AdamW state is keyed by (ZeRO-3 keeps them out of param_groups)."""
    flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
    if flat is not None:
        return list(flat)
    return [p for group in engine.optimizer.optimizer.param_groups for p in group["params"]]


def to_universal(src: Path, out: Path) -> None:
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    if dist.get_rank() == 0:
        shutil.rmtree(out, ignore_errors=True)
        args = SimpleNamespace(
            input_folder=str(src / "tag"),
            output_folder=str(out / "tag"),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,
        )
        ds_to_universal(args)
    dist.barrier()


def compare(want: dict[str, Any], got: dict[str, Any], label: str) -> None:
    """Print each difference between two snapshots (max abs difference per tensor)."""
    print(f"--- {label}")
    for name, states in want["params"].items():
        for key, tensor in states.items():
            other = got["params"][name][key]
            if tensor.shape != other.shape:
                print(f"  {name}.{key}: shape {tuple(tensor.shape)} vs {tuple(other.shape)}")
                continue
            diff = float((tensor - other).abs().max())
            if diff > 0:
                print(f"  {name}.{key}: max |diff| {diff:.3e}")
    for key in ("steps", "step_tensors_shared", "scheduler", "lr", "frozen_numel"):
        mark = "same" if want[key] == got[key] else "DIFFERENT"
        print(f"  {key}: {mark}: uninterrupted {want[key]} | resumed {got[key]}")
    for k, (a, b) in enumerate(zip(want["groups"], got["groups"], strict=True)):
        diff = {name: (a[name], b.get(name)) for name in a if a[name] != b.get(name)}
        print(
            f"  param group {k}: "
            + (f"DIFFERENT (uninterrupted, resumed): {diff}" if diff else "same")
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["save", "resume"])
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--save-at", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fix", nargs="*", choices=["step", "decay"], default=[])
    args = parser.parse_args()
    world = int(os.environ["WORLD_SIZE"])
    engine = build(args.stage, world)
    if args.mode == "save":
        train(engine, 0, args.save_at)
        engine.save_checkpoint(str(args.dir / "ckpt"), tag="tag")
        saved = snapshot(engine)
        train(engine, args.save_at, args.steps)
        if dist.get_rank() == 0:
            torch.save(
                {"world": world, "saved": saved, "final": snapshot(engine)}, args.dir / "ref.pt"
            )
        else:
            snapshot(engine)
        return
    ref = torch.load(args.dir / "ref.pt", weights_only=False)
    universal = ref["world"] != world
    src = args.dir / "ckpt"
    if universal:
        to_universal(src, args.dir / "universal")
        src = args.dir / "universal"
    engine._config.load_universal_checkpoint = universal
    engine.load_checkpoint(str(src), tag="tag")
    engine._config.load_universal_checkpoint = False
    if "step" in args.fix:  # nluft's repair (nluft/distributed/deepspeed.py)
        from nluft.distributed.deepspeed import separate_step_counters

        separate_step_counters(engine.optimizer)
    if "decay" in args.fix:  # nluft's earlier repair: each group's own weight decay
        for group, decay in zip(engine.optimizer.optimizer.param_groups, [0.1, 0.0], strict=True):
            group["weight_decay"] = decay
    loaded = snapshot(engine)
    train(engine, args.save_at, args.steps)
    final = snapshot(engine)
    if dist.get_rank() == 0:
        how = f"ZeRO-{args.stage} {ref['world']} -> {world} rank(s), fix={args.fix}"
        compare(ref["saved"], loaded, f"{how}: right after the load")
        compare(ref["final"], final, f"{how}: after step {args.steps}")
        print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
