"""Batch order for training and evaluation, as plain index lists (rank and world size passed in).

Training batches are *global*: every rank takes its slice of the same global batch, so a run on
2 ranks with batch 8 sees the same examples per step as a run on 1 rank with batch 16.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nluft.data.collate import LABEL_PAD

MEGABATCH_MULT = 50  # as in the Hugging Face length-grouped sampler


def train_batches(
    lengths: Sequence[int],
    global_batch: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
) -> list[list[int]]:
    """Seeded global batches for one epoch; with grouping, similar lengths share a batch.

    Grouping shuffles, cuts megabatches of 50 batches, sorts each by length, cuts batches, then
    shuffles the batch order: little padding, still random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        size = global_batch * MEGABATCH_MULT
        lens = np.asarray(lengths)
        order = np.concatenate(
            [
                mega[np.argsort(-lens[mega], kind="stable")]
                for mega in np.split(order, range(size, len(order), size))
            ]
        )
    batches = [order[i : i + global_batch].tolist() for i in range(0, len(order), global_batch)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def rank_slice(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous part of a global batch, without duplicates.

    A short last batch gives some ranks one example fewer (or none): every example of an epoch
    is seen exactly once, and `accumulation_groups` weighs each rank's loss by what it really has.
    """
    per_rank, extra = divmod(len(batch), world_size)
    start = rank * per_rank + min(rank, extra)
    return batch[start : start + per_rank + (1 if rank < extra else 0)]


@dataclass(frozen=True)
class MicroBatch:
    """One forward/backward of this rank, and its place in an optimizer step.

    `weight` multiplies the micro-batch's mean loss so that the gradient (averaged over ranks by
    every backend) is the mean over all scored terms (examples, or NER/QA tokens) of the step's
    micro-batches on all ranks. A rank with nothing left in a short last batch runs one real
    feature with weight 0: sharded backends need every rank in every forward.
    """

    indices: list[int]
    weight: float
    examples: int  # real examples of this rank (0 for a weight-0 stand-in)
    first_in_group: bool
    last_in_group: bool
    group_examples: int  # examples of the whole optimizer step on all ranks (on the last one)


def accumulation_groups(
    batches: list[list[int]], terms: Sequence[int], accum: int, rank: int, world_size: int
) -> list[MicroBatch]:
    """This rank's micro-batches of one epoch of global `batches`, grouped into optimizer steps.

    Groups of `accum` global batches; an epoch's last group may be shorter and still steps (the
    Hugging Face Trainer's semantics). `terms[i]` is how many loss terms feature `i` scores.
    """
    out = []
    for start in range(0, len(batches), accum):
        group = batches[start : start + accum]
        total = sum(terms[i] for batch in group for i in batch)
        examples = sum(len(batch) for batch in group)
        for k, batch in enumerate(group):
            mine = rank_slice(batch, rank, world_size)
            local = sum(terms[i] for i in mine)
            weight = local * world_size / total if total else 0.0
            out.append(
                MicroBatch(
                    indices=mine or batch[:1],
                    weight=weight,
                    examples=len(mine),
                    first_in_group=k == 0,
                    last_in_group=k == len(group) - 1,
                    group_examples=examples,
                )
            )
    return out


def num_terms(labels: Any) -> int:
    """Loss terms of one feature: its scored tokens (NER), 2 (QA start/end), label slots, or 1."""
    if isinstance(labels, list):
        return sum(1 for v in labels if v != LABEL_PAD)
    return 1


def num_eval_steps(num_examples: int, batch_size: int, world_size: int) -> int:
    """Evaluation batches of the busiest rank (rank 0); every rank runs this many."""
    per_rank = -(-num_examples // world_size)
    return -(-per_rank // batch_size)


def eval_batches(
    lengths: Sequence[int], batch_size: int, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's evaluation batches: every `world_size`-th example, no padding, no duplicates.

    Sorted by length so batches pad little; predictions are put back in order by index.
    """
    mine = np.arange(rank, len(lengths), world_size)
    mine = mine[np.argsort(-np.asarray(lengths)[mine], kind="stable")]
    return [mine[i : i + batch_size].tolist() for i in range(0, len(mine), batch_size)]
