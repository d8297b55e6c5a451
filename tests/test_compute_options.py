"""Compute-side options (issue 15): each trains, and to the default run's losses.

- `model.attn_implementation=eager` against transformers' default (sdpa): same math, other kernel;
- `data.pad_to_multiple_of`: extra padding is masked, so the loss is unchanged;
- `train.torch_compile` (backend eager: dynamo's capture and guards, which decide recompiles,
  without AOTAutograd or inductor's C++ generation, minutes on a CPU; tests/test_distributed.py
  runs aot_eager under ddp) gives the eager losses, and length-grouped batches of many different
  lengths run on a bounded number of graphs instead of one per shape.

All runs use the tiny BERT without dropout, in this process (no start-up cost).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dist_jobs
import pytest
import yaml
from conftest import sentiment_rows, write_csv

STEPS = 6


def options_config(tmp_path: Path, model_dir: Path) -> Path:
    rows = sentiment_rows(48, seed=3)
    for i, row in enumerate(rows):  # lengths from 5 to ~40 tokens: many distinct batch shapes
        row["text"] += " and the plot" * (i % 9)
    cfg = {
        "task": "classification",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "train_file": str(write_csv(tmp_path / "train.csv", rows)),
            "max_length": 64,
            "cache_dir": str(tmp_path / "cache"),
            "validation_split_percentage": 0,
            "test_split_percentage": 0,
        },
        "train": {
            "learning_rate": 3e-3,
            "seed": 5,
            "per_device_train_batch_size": 4,
            "max_steps": STEPS,
            "logging_steps": 1,
            "eval_strategy": "no",
        },
        "tracking": {"progress_bar": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(config: Path, out: Path, *overrides: str) -> list[dict[str, Any]]:
    """The run's train records (one per step)."""
    argv = ["train", str(config), f"output_dir={out}", *overrides]
    dist_jobs.run_jobs([{"kind": "cli", "argv": argv}])
    records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r["kind"] == "train"]


def losses(records: list[dict[str, Any]]) -> list[float]:
    return [r["loss"] for r in records]


@pytest.fixture(scope="module")
def default_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_no_dropout: Path
) -> tuple[Path, list[dict[str, Any]], set[int]]:
    """The default run, and the padded sequence lengths of the batches it trained on (seen by
    a global hook on the word-embedding table, as benchmarks/worker.py counts tokens)."""
    import torch

    tmp = tmp_path_factory.mktemp("options")
    config = options_config(tmp, tiny_model_no_dropout)
    lengths: set[int] = set()

    def record(module: Any, args: tuple[Any, ...]) -> None:
        if (
            isinstance(module, torch.nn.Embedding)
            and module.training
            and module.num_embeddings > 512
        ):
            lengths.add(int(args[0].shape[1]))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        records = train(config, tmp / "default")
    finally:
        handle.remove()
    return config, records, lengths


@pytest.mark.parametrize(
    "overrides",
    [["model.attn_implementation=eager"], ["data.pad_to_multiple_of=16"]],
    ids=["eager-attention", "pad-to-16"],
)
def test_option_trains_to_the_default_losses(
    default_run: tuple[Path, list[dict[str, Any]], set[int]], tmp_path: Path, overrides: list[str]
) -> None:
    config, default, _ = default_run
    records = train(config, tmp_path / "run", *overrides)
    assert len(records) == STEPS
    assert losses(records) == pytest.approx(losses(default), rel=1e-4, abs=1e-5)
    if overrides == ["data.pad_to_multiple_of=16"]:
        # the same real tokens, in more slots
        assert sum(r["padding_efficiency"] for r in records) < sum(
            r["padding_efficiency"] for r in default
        )


def test_torch_compile_matches_eager_and_reuses_one_graph_across_lengths(
    default_run: tuple[Path, list[dict[str, Any]], set[int]], tmp_path: Path
) -> None:
    """Dynamic shapes: the batches have many padded lengths, the compiled model few graphs
    (training forward+backward; one more for a batch of one, which dynamo specialises)."""
    import torch._dynamo

    config, default, lengths = default_run
    assert len(lengths) >= 5, f"the data must give many batch shapes, got {sorted(lengths)}"
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        records = train(
            config,
            tmp_path / "run",
            "train.torch_compile=true",
            "train.torch_compile_backend=eager",
        )
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()  # later tests in this process start from a clean cache
    assert losses(records) == pytest.approx(losses(default), rel=1e-4, abs=1e-5)
    assert 1 <= graphs <= 2 < len(lengths), (graphs, sorted(lengths))
    assert records[-1]["compiled_graphs"] == graphs  # what the log reports is torch's count
    assert records[-1]["compile_seconds"] > 0
    speed = json.loads((tmp_path / "run" / "results" / "train.json").read_text())
    assert speed["compile_seconds"] >= records[-1]["compile_seconds"]
