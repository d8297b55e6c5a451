"""Batch order: seeded, complete, length-grouped, and split across ranks without duplicates."""

from __future__ import annotations

import random

from nluft.data.collate import collate
from nluft.data.sampling import eval_batches, rank_slice, train_batches


def lengths(n: int = 1000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 120) for _ in range(n)]


def padding_efficiency(batches: list[list[int]], lens: list[int]) -> float:
    real = sum(lens[i] for b in batches for i in b)
    slots = sum(max(lens[i] for i in b) * len(b) for b in batches)
    return real / slots


def test_every_example_once_per_epoch_and_seeded() -> None:
    lens = lengths()
    batches = train_batches(lens, 16, seed=3, epoch=0, group_by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(len(lens)))
    assert batches == train_batches(lens, 16, seed=3, epoch=0, group_by_length=True)
    assert batches != train_batches(lens, 16, seed=3, epoch=1, group_by_length=True)


def test_length_grouping_cuts_padding() -> None:
    lens = lengths()
    grouped = padding_efficiency(train_batches(lens, 16, 0, 0, True), lens)
    random_order = padding_efficiency(train_batches(lens, 16, 0, 0, False), lens)
    assert grouped > 0.9 > random_order


def test_rank_slices_partition_a_global_batch() -> None:
    batch = list(range(10, 26))
    parts = [rank_slice(batch, r, 2) for r in range(2)]
    assert parts[0] + parts[1] == batch


def test_short_last_batch_is_split_without_duplicates() -> None:
    parts = [rank_slice([1, 2, 3], r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [2, 1]
    assert parts[0] + parts[1] == [1, 2, 3]  # every example once; the loss weighs each rank's share


def test_eval_shards_have_no_duplicates() -> None:
    lens = lengths(101)
    seen = [i for r in range(3) for b in eval_batches(lens, 8, r, 3) for i in b]
    assert sorted(seen) == list(range(101))


def test_collate_pads_to_the_longest_in_batch() -> None:
    batch = collate(
        {"input_ids": [[5, 6, 7], [8]], "attention_mask": [[1, 1, 1], [1]], "labels": [1, 0]}, 0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    tokens = collate({"input_ids": [[5, 6], [8]], "labels": [[1, 2], [3]]}, 0)
    assert tokens["labels"].tolist() == [[1, 2], [3, -100]]


def test_every_rank_runs_the_busiest_ranks_number_of_eval_batches() -> None:
    from nluft.data.sampling import num_eval_steps

    for n, batch, world in [(129, 64, 2), (3, 8, 4), (100, 10, 3), (1, 1, 2)]:
        counts = [len(eval_batches([5] * n, batch, r, world)) for r in range(world)]
        assert num_eval_steps(n, batch, world) == max(counts)
