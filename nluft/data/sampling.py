"""Batch order for training and evaluation, as plain index lists (rank and world size passed in).

Training batches are *global*: every rank takes its slice of the same global batch, so a run on
2 ranks with batch 8 sees the same examples per step as a run on 1 rank with batch 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
    """This rank's contiguous part of a global batch; a short last batch is padded by wrapping.

    Wrapping keeps every rank's share the same size, so averaged gradients weigh examples equally.
    """
    per_rank = -(-len(batch) // world_size)
    padded = (batch * world_size)[: per_rank * world_size]
    return padded[rank * per_rank : (rank + 1) * per_rank]


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
