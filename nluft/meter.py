"""Loss and throughput of the training loop over one logging window (no torch import)."""

from __future__ import annotations

import time
from typing import Any


class Meter:
    """Loss and throughput over the current logging window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # One per optimizer step: this rank's weighted sum, a float or a detached 0-d tensor
        # (kept on the device until `summary`, so logging is the only host-device sync).
        self.losses: list[Any] = []
        self.step_loss: Any = 0.0
        self.real_tokens = self.slots = self.window_examples = self.micro = 0
        self.squared_lengths = 0  # sum of length^2 over sequences: the attention work
        self.start = time.perf_counter()

    def add(self, loss: Any, attention_mask: Any, examples: int) -> None:
        """One micro-batch: its weighted loss (see `MicroBatch.weight`) and its tokens (pass
        the host-side mask: counting on a device would wait for it)."""
        self.step_loss += loss
        self.real_tokens += int(attention_mask.sum())
        self.squared_lengths += int((attention_mask.sum(dim=1) ** 2).sum())
        self.slots += attention_mask.numel()
        self.window_examples += examples
        self.micro += 1

    def end_step(self) -> None:
        """Close an optimizer step: the mean over ranks of its weighted sums is the step's loss."""
        self.losses.append(self.step_loss)
        self.step_loss = 0.0

    def summary(self, world_size: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {
            # sum() of device tensors stays there: one sync for the whole window
            "loss": float(sum(self.losses)) / len(self.losses) if self.losses else float("nan"),
            "examples_per_s": self.window_examples * world_size / elapsed,
            "tokens_per_s": self.real_tokens * world_size / elapsed,
            "padding_efficiency": self.real_tokens / max(1, self.slots),
            "attention_context": self.squared_lengths / max(1, self.real_tokens),
        }


def throughput(state: Any, world_size: int) -> dict[str, float]:
    """Whole-run training throughput of a `TrainState` (evaluation and checkpoint time excluded)."""
    seconds = max(state.train_seconds, 1e-9)
    return {
        "steps": state.global_step,
        "train_seconds": round(state.train_seconds, 2),
        "examples_per_s": state.examples_seen / seconds,
        "tokens_per_s": state.real_tokens * world_size / seconds,
        "padding_efficiency": state.real_tokens / max(1, state.padded_slots),
    }
