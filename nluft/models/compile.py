"""torch.compile for training (`train.torch_compile`): one graph for every batch shape, and the
time spent compiling kept apart from training time.

The model is compiled in place (`nn.Module.compile`), not wrapped: state-dict keys, strategies'
`unwrapped()`, checkpoints and exports see the plain Hugging Face module, and DDP wraps it as
usual. Shapes are dynamic from the first call, so the sequence length and the batch size are
symbols: length-grouped batches (a new longest length almost every step) reuse one graph
instead of compiling one per length, as a static first compile would.
"""

from __future__ import annotations

from typing import Any

import torch

from nluft.config import TrainConfig


def compile_model(model: torch.nn.Module, train: TrainConfig) -> None:
    """Compile `model`'s forward (and, through AOTAutograd, its backward) when configured."""
    if train.torch_compile:
        model.compile(dynamic=True, backend=train.torch_compile_backend)


class CompileClock:
    """Seconds spent compiling so far and graphs built, read from torch._dynamo's own counters
    (cumulative over the process: dynamo tracing, AOT forward and backward, code generation)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def seconds(self) -> float:
        if not self.enabled:
            return 0.0
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("total_wall_time", 0.0))

    def describe(self) -> dict[str, Any]:
        """What the log and results/train.json report (nothing when compile is off)."""
        if not self.enabled:
            return {}
        from torch._dynamo.utils import counters

        return {
            "compile_seconds": round(self.seconds(), 2),
            "compiled_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
        }
