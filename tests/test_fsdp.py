"""FSDP2 under a real 2-process torchrun on gloo: parity, memory, DCP resume 2 -> 1, export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import nluft
from distributed_runs import (
    COMMON,
    SINGLE_BATCH,
    STEPS,
    TWO_RANK_BATCH,
    final_metrics,
    memory,
    no_dropout_model,
    reference_run,
    torchrun,
    train_losses,
    write_config,
)

pytestmark = pytest.mark.distributed

LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sentiment_files: dict[str, Path]
) -> SimpleNamespace:
    """The reference run and a 2-rank fp32 fsdp run (checkpoints at steps 3 and 6)."""
    model = no_dropout_model(tmp_path_factory, tiny_model_dir)
    tmp = tmp_path_factory.mktemp("fsdp")
    cache = tmp_path_factory.getbasetemp() / "cache"
    config = write_config(tmp / "tiny.yaml", model, sentiment_files, cache)
    run_dir = tmp / "fsdp"
    torchrun(
        2,
        "train",
        str(config),
        *COMMON,
        *TWO_RANK_BATCH,
        "strategy.name=fsdp",
        f"output_dir={run_dir}",
    )
    return SimpleNamespace(
        config=config, reference=reference_run(tmp_path_factory, config), fsdp=run_dir, tmp=tmp
    )


def test_fsdp_matches_the_single_process_loss_curve(runs: SimpleNamespace) -> None:
    losses, expected = train_losses(runs.fsdp), train_losses(runs.reference)
    delta = max(abs(a - b) for a, b in zip(losses, expected, strict=True))
    print(f"fsdp: max |loss - single| = {delta:.2e}")
    assert len(losses) == STEPS and delta <= LOSS_TOLERANCE, (losses, expected)


def test_fsdp_holds_half_the_model_states_per_rank(runs: SimpleNamespace) -> None:
    single = memory(runs.reference)[0]
    for rank in memory(runs.fsdp):
        for kind in ("params_bytes", "grads_bytes", "optimizer_bytes"):
            ratio = rank[kind] / single[kind]
            print(f"fsdp {kind} per rank / single = {ratio:.3f}")
            assert 0.49 <= ratio <= 0.52, (kind, rank, single)


def test_resume_on_one_rank_from_a_two_rank_dcp_checkpoint(runs: SimpleNamespace) -> None:
    run_dir = runs.tmp / "fsdp-resumed-on-1"
    shutil.copytree(runs.fsdp, run_dir)
    for name in ("checkpoints/step-00000006", "results", "export"):
        shutil.rmtree(run_dir / name)
    nluft(
        "train",
        str(runs.config),
        *COMMON,
        *SINGLE_BATCH,
        "strategy.name=fsdp",
        f"output_dir={run_dir}",
        "--resume",
        check=True,
        timeout=240,
    )
    resumed = train_losses(run_dir)[STEPS:]
    assert resumed == pytest.approx(train_losses(runs.fsdp)[STEPS // 2 :], abs=LOSS_TOLERANCE)
    expected, got = final_metrics(runs.fsdp), final_metrics(run_dir)
    for split in expected:
        assert got[split]["loss"] == pytest.approx(expected[split]["loss"], abs=LOSS_TOLERANCE)
        assert got[split]["accuracy"] == expected[split]["accuracy"]


def test_fsdp_export_reevaluates_to_the_same_metrics(runs: SimpleNamespace) -> None:
    proc = nluft("eval", str(runs.fsdp), "--split", "test", "--json", check=True)
    metrics = json.loads(proc.stdout)
    saved = final_metrics(runs.fsdp)["test"]
    assert metrics["accuracy"] == saved["accuracy"]
    assert metrics["loss"] == pytest.approx(saved["loss"], abs=1e-5)
    config = json.loads((runs.fsdp / "export" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]


def test_bf16_fsdp_with_cpu_offload_trains(runs: SimpleNamespace) -> None:
    run_dir = runs.tmp / "fsdp-bf16-offload"
    torchrun(
        2,
        "train",
        str(runs.config),
        *COMMON,
        *TWO_RANK_BATCH,
        "train.precision=bf16",
        "strategy.name=fsdp",
        "strategy.fsdp_cpu_offload=true",
        "strategy.fsdp_reshard_after_forward=false",
        f"output_dir={run_dir}",
    )
    losses = train_losses(run_dir)
    assert len(losses) == STEPS and all(0 < loss < 5 for loss in losses), losses
    assert (run_dir / "export" / "model.safetensors").is_file()
