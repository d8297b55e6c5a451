"""The DeepSpeed JSON is a pure function of the nluft config: golden files and user-JSON merging.

Regenerate the golden files after an intended change with NLUFT_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import nluft
from golden_files import check_golden

from nluft.config import validate
from nluft.distributed.deepspeed_config import build_deepspeed_config, resolve_deepspeed_config
from nluft.errors import NluftError

GOLDEN = Path(__file__).parent / "golden"
BASE = {
    "task": "classification",
    "output_dir": "runs/x",
    "model": {"name_or_path": "some/model"},
    "data": {"train_file": "train.csv"},
    "train": {"per_device_train_batch_size": 8, "learning_rate": 3e-5, "max_grad_norm": 1.0},
}
CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "zero2_fp32_cpu_2ranks": ({"strategy": {"name": "deepspeed"}}, 2, "cpu"),
    "zero0_fp32_cpu_1rank": ({"strategy": {"name": "deepspeed", "zero_stage": 0}}, 1, "cpu"),
    "zero1_fp16_cuda_8ranks_accum4": (
        {
            "strategy": {"name": "deepspeed", "zero_stage": 1},
            "train": {"precision": "fp16", "gradient_accumulation_steps": 4},
        },
        8,
        "cuda",
    ),
    "zero3_bf16_offload_cuda_16ranks": (
        {
            "strategy": {
                "name": "deepspeed",
                "zero_stage": 3,
                "offload_optimizer": True,
                "offload_params": True,
            },
            "train": {"precision": "bf16", "max_grad_norm": 0.0, "weight_decay": 0.1},
        },
        16,
        "cuda",
    ),
}


def config(extra: dict[str, Any]) -> Any:
    raw = json.loads(json.dumps(BASE))
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    return validate(raw, "test.yaml")


def find_auto(node: Any) -> bool:
    if isinstance(node, dict):
        return any(find_auto(v) for v in node.values())
    return node == "auto"


@pytest.mark.parametrize("name", sorted(CASES))
def test_deepspeed_json_matches_golden_file(name: str) -> None:
    extra, world_size, device = CASES[name]
    got = build_deepspeed_config(config(extra), world_size, device)
    path = GOLDEN / f"deepspeed_{name}.json"
    check_golden(path, json.dumps(got, indent=2) + "\n")
    assert not find_auto(got)
    assert got["train_batch_size"] == (
        got["train_micro_batch_size_per_gpu"] * got["gradient_accumulation_steps"] * world_size
    )


def test_user_json_adds_keys_and_resolves_auto(tmp_path: Path) -> None:
    user = tmp_path / "ds.json"
    user.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "zero_optimization": {"stage": 2, "reduce_bucket_size": 1000},
                "activation_checkpointing": {"partition_activations": False},
            }
        )
    )
    cfg = config({"strategy": {"name": "deepspeed", "deepspeed_config": str(user)}})
    got = resolve_deepspeed_config(cfg, 2, "cpu")
    assert got["train_micro_batch_size_per_gpu"] == 8
    assert got["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000}
    assert got["activation_checkpointing"] == {"partition_activations": False}


def test_user_json_conflict_names_the_key(tmp_path: Path) -> None:
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    cfg = config({"strategy": {"name": "deepspeed", "deepspeed_config": str(user)}})
    with pytest.raises(NluftError, match=r"'zero_optimization\.stage' is 3 .* gives 2"):
        resolve_deepspeed_config(cfg, 2, "cpu")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("strategy.zero_stage=3", "strategy.zero_stage: applies only to strategy.name=deepspeed"),
        ("strategy.fsdp_cpu_offload=true", "strategy.fsdp_cpu_offload: applies only to"),
    ],
)
def test_backend_keys_under_another_strategy_are_errors(override: str, expected: str) -> None:
    name = "fsdp" if "zero" in override else "deepspeed"
    with pytest.raises(NluftError, match=expected):
        validate({**BASE, "strategy": {"name": name, **parse(override)}}, "test.yaml")


def parse(override: str) -> dict[str, Any]:
    key, _, value = override.partition("=")
    return {key.split(".")[1]: json.loads(value)}


def test_offload_params_needs_zero3() -> None:
    with pytest.raises(NluftError, match=r"strategy\.offload_params: parameter offload needs"):
        config({"strategy": {"name": "deepspeed", "offload_params": True}})


def test_dry_run_prints_the_deepspeed_config_and_conflicts_exit_2(
    tiny_config: Path, tmp_path: Path
) -> None:
    proc = nluft(
        "train", str(tiny_config), "strategy.name=deepspeed", "strategy.zero_stage=3", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    assert '"train_micro_batch_size_per_gpu": 16' in proc.stdout
    assert '"stage": 3' in proc.stdout
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4}))
    proc = nluft(
        "train",
        str(tiny_config),
        "strategy.name=deepspeed",
        f"strategy.deepspeed_config={user}",
        "--dry-run",
    )
    assert proc.returncode == 2
    assert "'train_micro_batch_size_per_gpu' is 4" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
