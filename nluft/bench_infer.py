"""`nluft bench-infer`: accuracy, size on disk, batch-1 latency and batch-32 throughput of exports.

Teacher, student and quantised exports go in one table. Timings are of the model's forward pass
on pre-tokenized features of the test split (tokenization excluded), under `torch.inference_mode`
with torch's thread setting. A loaded machine makes single timings meaningless, so every round
times every model in turn (rotated order: interleaved), and the table shows the median over
rounds with its spread (min-max); speed ratios to the first model are taken within each round,
then their median, so load that hits one round hits every model of that round alike.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nluft.data import build_data
from nluft.data.collate import MODEL_INPUTS, collate
from nluft.errors import NluftError
from nluft.evaluate import evaluate_split, load_for_inference
from nluft.quantize import WEIGHTS, is_quantized

WEIGHT_SUFFIXES = (".safetensors", ".bin", WEIGHTS)


@dataclass
class Subject:
    """One export under test and its measurements per round."""

    name: str
    export_dir: Path
    model: torch.nn.Module
    singles: list[dict[str, torch.Tensor]]
    batches: list[dict[str, torch.Tensor]]
    metrics: dict[str, float]
    metric: str  # the task's main metric
    size_bytes: int
    p50_ms: list[float] = field(default_factory=list)
    p95_ms: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)


def export_of(path: Path) -> tuple[Path, Path]:
    """(run dir, export dir) for a run directory or an export folder inside one."""
    if (path / "config.yaml").is_file():
        return path, path / "export"
    if (path.parent / "config.yaml").is_file() and (path / "config.json").is_file():
        return path.parent, path
    raise NluftError(f"{path}: neither a run directory nor an export folder inside one")


def size_on_disk(export_dir: Path) -> int:
    """Bytes of the model's weight files (config and tokenizer files left out)."""
    return sum(p.stat().st_size for p in export_dir.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))


def load_subject(path: Path, num_latency: int, batch_size: int, split: str) -> Subject:
    run_dir, export_dir = export_of(path)
    cfg, strategy, task, tokenizer = load_for_inference(run_dir, [], export_dir)
    data = build_data(cfg, task, tokenizer, is_main=True, barrier=lambda: None)
    if split not in data.features:
        raise NluftError(f"{run_dir}: no {split!r} split to benchmark on")
    features = data.features[split]
    pad = int(tokenizer.pad_token_id or 0)
    metrics, _ = evaluate_split(
        strategy, task, data.examples[split], features, cfg.train.per_device_eval_batch_size, pad
    )
    columns = features.select_columns([c for c in MODEL_INPUTS if c in features.column_names])
    # Latency on an evenly spaced sample (the split's length mix); throughput on all of it.
    picks = np.linspace(0, len(features) - 1, min(num_latency, len(features))).astype(int)
    singles = [collate(columns[[int(i)]], pad) for i in picks]
    batches = [
        collate(columns[start : start + batch_size], pad)
        for start in range(0, len(features), batch_size)
    ]
    name = str(path)
    assert strategy.model is not None
    return Subject(
        name,
        export_dir,
        strategy.model,
        singles,
        batches,
        metrics,
        task.default_metric,
        size_on_disk(export_dir),
    )


@torch.inference_mode()
def time_round(subject: Subject) -> None:
    """One round: every single example at batch 1, then the whole split in batches."""
    model = subject.model.eval()
    model(**subject.singles[0])  # warm-up: first-call allocations and kernel selection
    latencies = []
    for inputs in subject.singles:
        start = time.perf_counter()
        model(**inputs)
        latencies.append((time.perf_counter() - start) * 1000)
    subject.p50_ms.append(float(np.percentile(latencies, 50)))
    subject.p95_ms.append(float(np.percentile(latencies, 95)))
    count, start = 0, time.perf_counter()
    for inputs in subject.batches:
        model(**inputs)
        count += len(inputs["input_ids"])
    subject.throughput.append(count / (time.perf_counter() - start))


def bench_infer(
    paths: list[Path],
    rounds: int = 5,
    num_latency: int = 100,
    batch_size: int = 32,
    split: str = "test",
) -> dict[str, Any]:
    """Measure every export `rounds` times, interleaved; the result behind the table."""
    subjects = [load_subject(p, num_latency, batch_size, split) for p in paths]
    for r in range(rounds):
        for k in range(len(subjects)):
            time_round(subjects[(r + k) % len(subjects)])
    base = subjects[0]
    rows = []
    for s in subjects:
        speedup_1 = [b / x for b, x in zip(base.p50_ms, s.p50_ms, strict=True)]
        speedup_32 = [x / b for b, x in zip(base.throughput, s.throughput, strict=True)]
        rows.append(
            {
                "model": s.name,
                "quantized": is_quantized(s.export_dir),
                "metrics": s.metrics,
                "size_mb": s.size_bytes / 1e6,
                "batch1_p50_ms": spread(s.p50_ms),
                "batch1_p95_ms": spread(s.p95_ms),
                f"batch{batch_size}_examples_per_s": spread(s.throughput),
                "batch1_speedup": spread(speedup_1),
                f"batch{batch_size}_speedup": spread(speedup_32),
            }
        )
    setup = {
        "rounds": rounds,
        "latency_examples": len(base.singles),
        "throughput_examples": sum(len(b["input_ids"]) for b in base.batches),
        "batch_size": batch_size,
        "split": split,
        "metric": base.metric,
        "torch_threads": torch.get_num_threads(),
    }
    return {"setup": setup, "rows": rows}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def format_bench(result: dict[str, Any]) -> str:
    """The table a user reads: one row per export, medians with min-max over rounds."""
    setup = result["setup"]
    metric = setup["metric"]
    b = setup["batch_size"]
    head = (
        f"| model | {metric} | size MB | batch-1 p50 ms | batch-1 p95 ms | batch-{b} ex/s "
        f"| batch-1 speedup | batch-{b} speedup |"
    )
    lines = [head, "|" + "---|" * 8]
    for row in result["rows"]:
        cells = [
            row["model"],
            f"{row['metrics'].get(metric, float('nan')):.4f}",
            f"{row['size_mb']:.1f}",
            cell(row["batch1_p50_ms"], 2),
            cell(row["batch1_p95_ms"], 2),
            cell(row[f"batch{b}_examples_per_s"], 1),
            cell(row["batch1_speedup"], 2) + "x",
            cell(row[f"batch{b}_speedup"], 2) + "x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"{setup['rounds']} interleaved rounds; per round {setup['latency_examples']} examples "
        f"at batch 1 and {setup['throughput_examples']} at batch {b} ({setup['split']} split); "
        f"median (min-max) over rounds; torch threads {setup['torch_threads']}"
    )
    return "\n".join(lines)


def cell(values: dict[str, float], digits: int) -> str:
    return f"{values['median']:.{digits}f} ({values['min']:.{digits}f}-{values['max']:.{digits}f})"


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2))
