"""Compute options of nluft, step against step in one process: a fair comparison on a busy machine.

    .venv/bin/python benchmarks/options_ab.py --steps 12 --variants eager pad8 compile bf16

Every variant is the main job's model (packaged MiniLM, 2 labels) with the same initial weights and
its own fused AdamW; every round runs one training step of each variant on the same
length-grouped batch of the main job's data (Rotten Tomatoes train split, batch 32), in turn (each
round starting with the next variant), so a slow second of the machine hits all of them alike.
Per variant: the median wall and process CPU time of a step over the rounds after the warm-up,
and the median of the per-round ratios to `default`. torch.compile's first steps (compiling)
are reported apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "eager": {"attn_implementation": "eager"},
    "pad8": {"pad_to_multiple_of": 8},
    "compile": {"compile": True},
    "compile-pad8": {"compile": True, "pad_to_multiple_of": 8},
    "bf16": {"autocast": "bfloat16"},  # train.precision=bf16: autocast, fp32 weights and AdamW
}


def main_job_batches(config: str, steps: int) -> tuple[Any, list[dict[str, Any]], int]:
    """The main job's config, its first `steps` training batches (columns), and the pad id."""
    from nluft.config import load_config
    from nluft.data import build_data
    from nluft.data.collate import MODEL_INPUTS
    from nluft.data.sampling import train_batches
    from nluft.models import build_tokenizer
    from nluft.tasks import build_task

    cfg = load_config(config, ["data.cache_dir=/tmp/nluft-options-ab"])
    task = build_task(cfg)
    tokenizer = build_tokenizer(cfg.model, task)
    data = build_data(cfg, task, tokenizer, True, lambda: None)
    features = data.features["train"]
    names = [c for c in (*MODEL_INPUTS, "labels") if c in features.column_names]
    columns = features.select_columns(names)
    t = cfg.train
    order = train_batches(features["length"], t.per_device_train_batch_size, t.seed, 0, True)
    return (cfg, task, tokenizer), [columns[b] for b in order[:steps]], tokenizer.pad_token_id


def build_step(setup: Any, options: dict[str, Any], pad_id: int) -> Callable[[Any], None]:
    """One training step of a variant: collate, forward, loss, backward, clip, fused AdamW."""
    import torch

    from nluft.data.collate import collate
    from nluft.models import build_model

    cfg, task, tokenizer = setup
    attn = options.get("attn_implementation")
    model_cfg = cfg.model.model_copy(update={"attn_implementation": attn})
    torch.manual_seed(0)
    model = build_model(model_cfg, task, tokenizer)
    model.train()
    if options.get("compile"):
        model.compile(dynamic=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, fused=True)
    multiple = options.get("pad_to_multiple_of", 1)

    dtype = getattr(torch, options["autocast"]) if "autocast" in options else None

    def step(columns: Any) -> None:
        batch = collate(columns, pad_id, multiple)
        labels = batch.pop("labels")
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(**batch).logits
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sentiment.yaml")
    parser.add_argument("--steps", type=int, default=12, help="rounds (one step per variant)")
    parser.add_argument("--warmup", type=int, default=2, help="rounds left out of the medians")
    parser.add_argument("--variants", nargs="+", default=["eager", "pad8"], choices=list(VARIANTS))
    args = parser.parse_args()
    setup, batches, pad_id = main_job_batches(args.config, args.steps)
    names = dict.fromkeys(["default", *args.variants])
    steps = {v: build_step(setup, VARIANTS[v], pad_id) for v in names}
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in steps}
    before = os.getloadavg()
    order = list(steps)
    for i, columns in enumerate(batches):
        # Each round starts with another variant: whoever runs first meets a colder cache.
        for name in order[i % len(order) :] + order[: i % len(order)]:
            cpu, wall = time.process_time(), time.perf_counter()
            steps[name](columns)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    after = os.getloadavg()
    print("| variant | wall s/step | CPU s/step | wall / default | CPU / default | first steps s |")
    print("|---|---:|---:|---:|---:|---:|")
    base = times["default"][args.warmup :]
    for name, rows in times.items():
        kept = rows[args.warmup :]
        ratio = [[r[i] / b[i] for r, b in zip(kept, base, strict=True)] for i in (0, 1)]
        print(
            f"| {name} | {statistics.median(r[0] for r in kept):.3f} | "
            f"{statistics.median(r[1] for r in kept):.3f} | "
            f"{statistics.median(ratio[0]):.3f} | {statistics.median(ratio[1]):.3f} | "
            f"{sum(r[0] for r in rows[: args.warmup]):.1f} |"
        )
    print(
        f"\n{len(batches)} rounds, {args.warmup} warm-up; "
        f"load average before {before}, after {after}"
    )


if __name__ == "__main__":
    main()
