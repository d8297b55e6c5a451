"""DeepSpeed ZeRO 1/2/3 under a real 2-process torchrun on gloo: parity, memory, resume, export."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import nluft
from distributed_runs import (
    COMMON,
    SINGLE_BATCH,
    STEPS,
    TWO_RANK_BATCH,
    final_metrics,
    launch,
    memory,
    no_dropout_model,
    reference_run,
    torchrun,
    train_losses,
    write_config,
)

pytestmark = pytest.mark.distributed

# fp32 on the CPU: reductions over 2 ranks sum in another order than one process does.
LOSS_TOLERANCE = 1e-4


# A NaN loss on step 2 of 3 (tests/nan_step_job.py): case -> strategy overrides. ZeRO-0 in fp32
# steps a plain torch AdamW (with and without clipping); the others run DeepSpeed's ZeRO optimizers.
NAN_CASES = {
    f"zero{stage}-{precision}": [f"strategy.zero_stage={stage}", f"train.precision={precision}"]
    for stage in (0, 1, 2, 3)
    for precision in ("fp32", "bf16")
}
NAN_CASES["zero0-fp32-no-clipping"] = ["strategy.zero_stage=0", "train.max_grad_norm=0"]


BF16_OFFLOAD = [
    "train.precision=bf16",
    "strategy.zero_stage=3",
    "strategy.offload_optimizer=true",
    "strategy.offload_params=true",
]


def train_job(config: Path, run_dir: Path, *overrides: str) -> dict[str, Any]:
    """`nluft train` of a 2-rank DeepSpeed run, a job of tests/dist_jobs.py."""
    argv = ["train", str(config), *COMMON, *TWO_RANK_BATCH, "strategy.name=deepspeed"]
    return {"kind": "cli", "argv": [*argv, *overrides, f"output_dir={run_dir}"]}


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sentiment_files: dict[str, Path]
) -> SimpleNamespace:
    """The reference run; in one 2-rank launch of tests/dist_jobs.py: an fp32 run per ZeRO stage
    1, 2, 3, a bf16 ZeRO-3 run with CPU offload, and the NaN-step cases."""
    model = no_dropout_model(tmp_path_factory, tiny_model_dir)
    tmp = tmp_path_factory.mktemp("deepspeed")
    config = write_config(
        tmp / "tiny.yaml", model, sentiment_files, tmp_path_factory.getbasetemp() / "cache"
    )
    stages = {stage: tmp / f"zero{stage}" for stage in (1, 2, 3)}
    jobs = [train_job(config, run_dir, f"strategy.zero_stage={z}") for z, run_dir in stages.items()]
    jobs.append(train_job(config, tmp / "zero3-bf16-offload", *BF16_OFFLOAD))
    jobs += [
        {
            "kind": "nan_step",
            "overrides": ["strategy.name=deepspeed", *overrides],
            "out": str(tmp / f"nan-{case}.json"),
        }
        for case, overrides in NAN_CASES.items()
    ]
    launch(2, jobs, tmp / "jobs-2.json")
    return SimpleNamespace(
        config=config, reference=reference_run(tmp_path_factory, config), stages=stages, tmp=tmp
    )


def test_zero_stages_match_the_single_process_loss_curve(runs: SimpleNamespace) -> None:
    expected = train_losses(runs.reference)
    assert len(expected) == STEPS
    for stage, run_dir in runs.stages.items():
        losses = train_losses(run_dir)
        delta = max(abs(a - b) for a, b in zip(losses, expected, strict=True))
        print(f"ZeRO-{stage}: max |loss - single| = {delta:.2e}")
        assert delta <= LOSS_TOLERANCE, (stage, losses, expected)


def test_zero3_holds_half_the_model_states_per_rank(runs: SimpleNamespace) -> None:
    single = memory(runs.reference)[0]
    zero3 = memory(runs.stages[3])
    assert len(zero3) == 2
    for rank in zero3:
        ratio = rank["params_bytes"] / single["params_bytes"]
        print(f"ZeRO-3 rank params/single = {ratio:.3f}, report {rank}")
        # Partitions are padded to a multiple of the world size: a little over one half.
        assert 0.49 <= ratio <= 0.52, rank
        assert 0.49 <= rank["grads_bytes"] / single["grads_bytes"] <= 0.52, rank
    zero1 = memory(runs.stages[1])[0]
    assert zero1["params_bytes"] == single["params_bytes"]


def test_resume_on_one_rank_from_a_two_rank_checkpoint(runs: SimpleNamespace) -> None:
    """2 -> 1 ranks through DeepSpeed's universal checkpoint: same final metrics."""
    full = runs.stages[2]
    run_dir = runs.tmp / "zero2-resumed-on-1"
    shutil.copytree(full, run_dir)
    for name in ("checkpoints/step-00000006", "results", "export"):
        shutil.rmtree(run_dir / name)
    torchrun(
        1,
        "train",
        str(runs.config),
        *COMMON,
        *SINGLE_BATCH,
        "strategy.name=deepspeed",
        "strategy.zero_stage=2",
        f"output_dir={run_dir}",
        "--resume",
    )
    resumed_losses = train_losses(run_dir)[STEPS:]
    full_losses = train_losses(full)[STEPS // 2 :]
    assert resumed_losses == pytest.approx(full_losses, abs=LOSS_TOLERANCE)
    expected, got = final_metrics(full), final_metrics(run_dir)
    for split in expected:
        assert got[split]["loss"] == pytest.approx(expected[split]["loss"], abs=LOSS_TOLERANCE)
        assert got[split]["accuracy"] == expected[split]["accuracy"]


def test_zero3_export_reevaluates_to_the_same_metrics(runs: SimpleNamespace) -> None:
    run_dir = runs.stages[3]
    assert (run_dir / "export" / "model.safetensors").is_file()
    proc = nluft("eval", str(run_dir), "--split", "test", "--json", check=True)
    import json

    metrics = json.loads(proc.stdout)
    saved = final_metrics(run_dir)["test"]
    assert metrics["accuracy"] == saved["accuracy"]
    assert metrics["loss"] == pytest.approx(saved["loss"], abs=1e-5)


def test_bf16_zero3_with_cpu_offload_trains(runs: SimpleNamespace) -> None:
    run_dir = runs.tmp / "zero3-bf16-offload"
    losses = train_losses(run_dir)
    assert len(losses) == STEPS and all(0 < loss < 5 for loss in losses), losses
    assert (run_dir / "export" / "model.safetensors").is_file()


@pytest.mark.parametrize("case", sorted(NAN_CASES))
def test_a_nan_loss_skips_the_update_and_training_goes_on(runs: SimpleNamespace, case: str) -> None:
    """As every other strategy: the NaN step leaves the weights as they were, counts as a bad
    step, still advances the schedule, and the next step trains (ZeRO-0 in fp32 applied it)."""
    steps = json.loads((runs.tmp / f"nan-{case}.json").read_text())
    assert [(s["skipped"], s["fault"]) for s in steps] == [
        (False, False),
        (True, True),
        (False, False),
    ]
    assert not steps[1]["changed"], "the NaN step changed the weights"
    assert steps[0]["changed"] and steps[2]["changed"], "a finite step did not train"
    assert all(s["finite"] for s in steps)
    for k, s in enumerate(steps, start=1):  # linear decay over 10 steps from 1e-2
        assert math.isclose(s["lr"], 1e-2 * (1 - k / 10)), (k, s["lr"])
