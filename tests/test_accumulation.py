"""Accumulation, stop, step faults and refusals: the rules every strategy x task combination obeys.

- an epoch's last, partial accumulation group steps (the Hugging Face Trainer's semantics), the
  plan counts it, and every example is seen once per epoch on any world size;
- the loss of an optimizer step is the mean over every scored term (example, NER token, QA
  boundary) of its micro-batches on all ranks: 2 ranks x 8 == 1 x 16 for token-level tasks too;
- a stop request is honoured within one micro-batch, and resume redoes the interrupted group;
- an fp16 loss-scaler overflow is no fault; a skipped step keeps the schedule on global_step;
- relation extraction keeps both entity markers however far apart they are;
- combinations no run can honour are refused up front with one line, exit 2.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import dist_jobs
import pytest
import torch
import yaml
from conftest import sentiment_rows, write_csv

from nluft.checkpoint import check_resumable
from nluft.config import Config, build_plan
from nluft.data.sampling import accumulation_groups, num_terms, train_batches
from nluft.distributed.base import StepResult
from nluft.distributed.replicated import step_result
from nluft.errors import NluftError


def groups_of(n: int, batch: int, accum: int, world: int) -> list[list[Any]]:
    """Every rank's micro-batches of one epoch (global batch `batch` x `world`)."""
    batches = train_batches([5] * n, batch * world, seed=1, epoch=0, group_by_length=False)
    return [accumulation_groups(batches, [1] * n, accum, r, world) for r in range(world)]


@pytest.mark.parametrize(
    ("n", "batch", "accum", "world"),
    [(90, 32, 8, 1), (90, 16, 8, 2), (50, 4, 3, 2), (7, 2, 2, 3), (1, 4, 1, 2), (33, 5, 4, 3)],
)
def test_every_example_once_per_epoch_and_the_plan_counts_each_group(
    n: int, batch: int, accum: int, world: int
) -> None:
    ranks = groups_of(n, batch, accum, world)
    seen = [i for micro in ranks for m in micro if m.weight for i in m.indices]
    assert sorted(seen) == list(range(n)), "each example exactly once"
    cfg = Config.model_validate(
        {
            "task": "classification",
            "output_dir": "x",
            "model": {"name_or_path": "x"},
            "data": {"train_file": "x"},
            "train": {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accum},
        }
    )
    steps = sum(m.last_in_group for m in ranks[0])
    assert steps == build_plan(cfg, world, n).steps_per_epoch >= 1
    for r in range(1, world):  # every rank steps (and agrees on a stop) at the same micro-batch
        assert [m.last_in_group for m in ranks[r]] == [m.last_in_group for m in ranks[0]]
    # Weights over ranks and micro-batches of a group sum to the world size (DDP averages).
    ends = [k for k, m in enumerate(ranks[0]) if m.last_in_group]
    start = 0
    for end in ends:
        total = sum(m.weight for micro in ranks for m in micro[start : end + 1])
        assert math.isclose(total, world)
        start = end + 1


def step_loss(logits: torch.Tensor, labels: torch.Tensor, world: int, accum: int) -> float:
    """The step loss the loop's weights give (sum over ranks and micro-batches of weight x mean,
    divided by the world size as DDP's gradient average does), for token labels (-100 ignored)."""
    n = len(labels)
    batches = [list(range(i, min(i + n // accum, n))) for i in range(0, n, n // accum)]
    terms = [num_terms(row.tolist()) for row in labels]
    total = 0.0
    for rank in range(world):
        for m in accumulation_groups(batches, terms, accum, rank, world):
            if m.weight:
                mean = torch.nn.functional.cross_entropy(
                    logits[m.indices].reshape(-1, 3), labels[m.indices].reshape(-1)
                )
                total += m.weight * float(mean)
    return total / world


def test_token_loss_is_the_mean_over_every_scored_token_of_the_step() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 6, 3)
    labels = torch.randint(0, 3, (16, 6))
    labels[torch.rand(16, 6) < 0.5] = -100  # padding and ignored sub-tokens, unevenly spread
    labels[3] = -100  # a window with nothing scored
    want = float(torch.nn.functional.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1)))
    for world, accum in [(1, 1), (2, 1), (1, 2), (2, 2), (2, 4)]:  # 2 x 8 == 1 x 16, and more
        assert math.isclose(step_loss(logits, labels, world, accum), want, rel_tol=1e-6)


def test_fp16_overflow_while_calibrating_is_no_fault_but_at_the_floor_it_is() -> None:
    """The decision on a real GradScaler: an overflow at a high scale skips the step and halves
    the scale (not a bad step); at scale 1 the gradients themselves are Inf (a bad step)."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    results = []
    for init_scale in (2.0**16, 1.0):
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        scale = scaler.get_scale()
        scaler.scale((param * torch.tensor(float("inf"))).sum()).backward()
        scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_([param], 1.0))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        assert torch.equal(param.detach(), torch.ones(3)), "the scaler skipped the update"
        results.append(step_result(norm, True, scale))
    assert results[0] == StepResult(math.inf, skipped=True, fault=False)
    assert results[1].fault
    assert step_result(float("nan"), False, 0.0).fault  # bf16/fp32: any NaN is a fault
    assert step_result(0.5, True, 2.0**16) == StepResult(0.5)


def test_a_skipped_step_keeps_the_schedule_on_global_step(tmp_path: Path) -> None:
    from nluft.distributed import DistEnv
    from nluft.distributed.single import SingleStrategy

    cfg = Config.model_validate(
        {
            "task": "classification",
            "output_dir": str(tmp_path),
            "model": {"name_or_path": "x"},
            "data": {"train_file": "x"},
            "train": {"learning_rate": 1e-3, "max_steps": 10, "warmup_steps": 0},
        }
    )
    strategy = SingleStrategy(cfg, DistEnv())
    model = torch.nn.Linear(2, 1)
    strategy.setup(model, build_plan(cfg, 1, 100))
    before = model.weight.detach().clone()
    for step in range(1, 4):
        factor = float("nan") if step == 2 else 1.0
        strategy.backward(model(torch.ones(1, 2)).sum() * factor)
        result = strategy.step()
        assert result.fault == (step == 2)
        assert math.isclose(strategy.learning_rate, 1e-3 * (1 - step / 10)), step
    assert torch.isfinite(model.weight).all() and not torch.equal(model.weight, before)


def test_resume_refuses_another_batch_or_schedule_on_every_strategy() -> None:
    cfg = Config.model_validate(
        {
            "task": "classification",
            "output_dir": "x",
            "model": {"name_or_path": "x"},
            "data": {"train_file": "x"},
            "train": {"per_device_train_batch_size": 8, "max_steps": 20},
        }
    )
    saved = build_plan(cfg, 2, 100).__dict__
    check_resumable(saved, build_plan(cfg.model_copy(), 2, 100))
    other_batch = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"per_device_train_batch_size": 4})}
    )
    with pytest.raises(NluftError, match="effective batch of 16"):
        check_resumable(saved, build_plan(other_batch, 2, 100))
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 30})})
    with pytest.raises(NluftError, match="schedule runs 20 steps"):
        check_resumable(saved, build_plan(longer, 2, 100))
    # The same effective batch on another world size resumes (ddp, FSDP, DeepSpeed alike).
    one_rank = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"per_device_train_batch_size": 16})}
    )
    check_resumable(saved, build_plan(one_rank, 1, 100))


def test_relation_keeps_both_markers_however_far_apart(tiny_model_dir: Path) -> None:
    import transformers

    from nluft.tasks.relation import fit_length, insert_markers, start_marker

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_model_dir))
    markers = [start_marker("subject"), "[/E1]", start_marker("object"), "[/E2]"]
    tokenizer.add_tokens(markers, special_tokens=True)
    ids = {tokenizer.convert_tokens_to_ids(t) for t in markers}
    filler = " ".join(["word"] * 60)
    text = f"Alice Smith {filler} met Bob Jones"
    subject = {"start": 0, "end": 11}
    obj = {"start": len(text) - 9, "end": len(text)}
    marked = insert_markers(text, subject, obj, tokenizer.get_vocab())
    enc = fit_length(marked, tokenizer, 24, ids)
    assert len(enc["input_ids"]) == 24
    for marker in markers:
        assert tokenizer.convert_tokens_to_ids(marker) in enc["input_ids"], marker
    assert enc["input_ids"][0] == tokenizer.cls_token_id
    assert enc["input_ids"][-1] == tokenizer.sep_token_id
    assert len(enc["attention_mask"]) == len(enc["token_type_ids"]) == 24


# --- refusals, the regression runs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["train.precision=fp16", "train.device=cpu"], "fp16 needs a CUDA GPU"),
        (["strategy.name=fsdp", "train.precision=fp16"], "sharded loss scaler"),
        (["strategy.name=ddp", "strategy.zero_stage=2"], "applies only to strategy.name=deepspeed"),
        (["train.early_stopping_patience=2", "train.eval_strategy=no"], "needs evaluations"),
        (
            ["strategy.name=deepspeed", "strategy.zero_stage=0", "strategy.offload_optimizer=true"],
            "zero_stage >= 1",
        ),
    ],
)
def test_impossible_combinations_are_refused_up_front(
    tiny_config: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], says: str
) -> None:
    from nluft.cli import main

    for extra in (["--dry-run"], []):
        assert main(["train", str(tiny_config), *overrides, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and "\n" not in err and "Traceback" not in err, err
    assert not (tiny_config.parent / "run").exists()


def small_run(tmp_path: Path, model_dir: Path, rows: int, **train: Any) -> Path:
    files = {
        s: write_csv(tmp_path / f"{s}.csv", sentiment_rows(rows if s == "train" else 20, k))
        for k, s in enumerate(("train", "validation"), start=1)
    }
    cfg = {
        "task": "classification",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "train_file": str(files["train"]),
            "validation_file": str(files["validation"]),
            "max_length": 32,
            "cache_dir": str(tmp_path / "cache"),
            "test_split_percentage": 0,
        },
        "train": {"learning_rate": 3e-3, "seed": 7, "logging_steps": 1, **train},
        "tracking": {"progress_bar": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_accumulation_larger_than_an_epoch_steps_once_per_epoch(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Reproduced failure 1: 90 rows, batch 32 x 8 accumulation, 2 epochs looped forever."""
    config = small_run(
        tmp_path,
        tiny_model_dir,
        90,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=8,
        num_train_epochs=2,
    )
    started = time.monotonic()
    dist_jobs.run_jobs([{"kind": "cli", "argv": ["train", str(config)]}])
    assert time.monotonic() - started < 120
    assert train_steps(tmp_path / "run") == [1, 2]
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["steps_per_epoch"] == 1 and plan["total_steps"] == 2


def test_stop_inside_a_long_accumulation_group_and_resume_redoes_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Reproduced failure 1b: SIGTERM waited for an optimizer step that never came. Now the run
    stops within a micro-batch, its checkpoint is the last completed step (here: none, step 0),
    and the resumed run ends exactly like an uninterrupted one (same dropout draws included)."""
    args = {
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1000,
        "num_train_epochs": 2,
        "eval_strategy": "epoch",
    }
    config = small_run(tmp_path, tiny_model_dir, 40, **args)
    whole = tmp_path / "whole"
    dist_jobs.run_jobs([{"kind": "cli", "argv": ["train", str(config), f"output_dir={whole}"]}])
    run_dir = tmp_path / "run"
    thread = dist_jobs.signal_when(run_dir / "plan.json")
    with pytest.raises(SystemExit) as stopped:
        dist_jobs.run_jobs([{"kind": "cli", "argv": ["train", str(config)]}])
    thread.join()
    assert stopped.value.code == 3
    [checkpoint] = (run_dir / "checkpoints").glob("step-*")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (0, 0, 0)
    dist_jobs.run_jobs([{"kind": "cli", "argv": ["train", str(config), "--resume"]}])
    assert train_steps(run_dir) == train_steps(whole) == [1, 2]
    final = json.loads((run_dir / "results" / "validation.json").read_text())
    assert final == json.loads((whole / "results" / "validation.json").read_text())
