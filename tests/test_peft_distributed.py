"""LoRA on every strategy under real 2-process torchrun launches (gloo, CPU).

One 2-rank launch runs all trainings (tests/dist_jobs.py), one 1-rank launch resumes two of them
on another world size. Checks, against the single-process LoRA run: the loss curves (fp32), the
saved head and adapters (non-empty, complete, equal), resume 2 -> 1 rank for ZeRO-3 and FSDP2,
FSDP2 with a bf16 backbone and fp32 adapters, ZeRO-3 offload, and tiny Llama/Qwen2 decoders with
LoRA + a classification or token head under ZeRO-3 and FSDP2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from distributed_runs import (
    COMMON,
    LORA,
    SINGLE_BATCH,
    STEPS,
    TWO_RANK_BATCH,
    final_metrics,
    launch,
    lora_reference,
    memory,
    no_dropout_model,
    train_losses,
    write_config,
)
from test_ner import tagged_sentences, write_conll

pytestmark = pytest.mark.distributed

LOSS_TOLERANCE = 1e-4  # as tests/test_fsdp.py and tests/test_deepspeed.py
STRATEGIES = {
    "ddp": ["strategy.name=ddp"],
    "zero2": ["strategy.name=deepspeed", "strategy.zero_stage=2"],
    "zero3": ["strategy.name=deepspeed", "strategy.zero_stage=3"],
    "fsdp": ["strategy.name=fsdp"],
}
SHORT = ["train.max_steps=2", "train.eval_strategy=no", "train.logging_steps=1"]


def tiny_decoder(out: Path, kind: str, tokenizer_dir: Path) -> Path:
    """A 2-layer, 32-wide random Llama or Qwen2 with the packaged tokenizer."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    shape = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[kind]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_class(**shape))
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def decoder_jobs(tmp: Path, config: Path, tiny_model_dir: Path) -> list[dict[str, Any]]:
    """Llama + classification head and Qwen2 + token head, each under ZeRO-3 and FSDP2."""
    llama = tiny_decoder(tmp / "tiny-llama", "llama", tiny_model_dir)
    qwen2 = tiny_decoder(tmp / "tiny-qwen2", "qwen2", tiny_model_dir)
    conll = write_conll(tmp / "ner.conll", tagged_sentences(64, 1))
    ner = [
        "task=ner",
        f"data.train_file={conll}",
        "data.validation_file=null",
        "data.test_file=null",
        "ner.stride=4",
    ]
    jobs = []
    for strategy in ("zero3", "fsdp"):
        for name, model, task in (("llama-cls", llama, []), ("qwen2-ner", qwen2, ner)):
            argv = [f"model.name_or_path={model}", *task, *STRATEGIES[strategy], *SHORT]
            out = tmp / f"{name}-{strategy}"
            jobs.append(job(config, [*argv, *TWO_RANK_BATCH, *LORA, f"output_dir={out}"]))
    return jobs


def job(config: Path, overrides: list[str]) -> dict[str, Any]:
    return {"kind": "cli", "argv": ["train", str(config), *overrides]}


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sentiment_files: dict
) -> SimpleNamespace:
    model = no_dropout_model(tmp_path_factory, tiny_model_dir)
    tmp = tmp_path_factory.mktemp("peft-dist")
    cache = tmp_path_factory.getbasetemp() / "cache"
    config = write_config(tmp / "tiny.yaml", model, sentiment_files, cache)
    reference = lora_reference(tmp_path_factory, config)
    base = [*COMMON, *TWO_RANK_BATCH, *LORA]
    jobs = [job(config, [*base, *o, f"output_dir={tmp / s}"]) for s, o in STRATEGIES.items()]
    bf16 = ["model.torch_dtype=bfloat16", "train.precision=bf16"]
    checkpointing = "model.gradient_checkpointing=true"
    jobs.append(
        job(
            config,
            [*base, *STRATEGIES["fsdp"], *bf16, checkpointing, f"output_dir={tmp / 'fsdp-bf16'}"],
        )
    )
    offload = ["strategy.offload_optimizer=true", "strategy.offload_params=true", checkpointing]
    jobs.append(
        job(
            config,
            [*base, *SHORT, *STRATEGIES["zero3"], *offload, f"output_dir={tmp / 'zero3-offload'}"],
        )
    )
    jobs += decoder_jobs(tmp, config, tiny_model_dir)
    launch(2, jobs, tmp / "jobs-2.json")
    resumed = []
    for strategy in ("zero3", "fsdp"):
        run_dir = tmp / f"{strategy}-resumed-on-1"
        shutil.copytree(tmp / strategy, run_dir)
        for name in (f"checkpoints/step-{STEPS:08d}", "results", "export", "export-adapter"):
            shutil.rmtree(run_dir / name)
        argv = [*COMMON, *SINGLE_BATCH, *LORA, *STRATEGIES[strategy], f"output_dir={run_dir}"]
        resumed.append(job(config, [*argv, "--resume"]))
    launch(1, resumed, tmp / "jobs-1.json")
    return SimpleNamespace(tmp=tmp, reference=reference)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_lora_loss_curve_matches_the_single_process_run(
    runs: SimpleNamespace, strategy: str
) -> None:
    losses, expected = train_losses(runs.tmp / strategy), train_losses(runs.reference)
    delta = max(abs(a - b) for a, b in zip(losses, expected, strict=True))
    print(f"lora {strategy}: max |loss - single| = {delta:.2e}")
    assert len(losses) == STEPS and delta <= LOSS_TOLERANCE, (losses, expected)
    assert expected[-1] < expected[0] - 0.01  # the curve moves: parity is not trivially met


def adapter_tensors(run_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "export-adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_saved_head_and_adapters_are_complete_on_every_strategy(
    runs: SimpleNamespace, strategy: str
) -> None:
    expected, got = adapter_tensors(runs.reference), adapter_tensors(runs.tmp / strategy)
    assert set(got) == set(expected)
    assert any("classifier" in k for k in got) and any("lora_B" in k for k in got)
    for key, tensor in expected.items():
        assert got[key].shape == tensor.shape and got[key].numel() > 0, key
        assert (got[key] - tensor).abs().max() <= 1e-4, key
        if "lora_B" in key:  # lora_B starts at zero: non-zero means the update was saved
            assert tensor.abs().max() > 0, key
    merged_single = runs.reference / "export" / "model.safetensors"
    from safetensors.torch import load_file

    merged = load_file(str(runs.tmp / strategy / "export" / "model.safetensors"))
    for key, tensor in load_file(str(merged_single)).items():
        assert (merged[key] - tensor).abs().max() <= 1e-4, key  # ZeRO-3 merge gathered all


@pytest.mark.parametrize("strategy", ["zero3", "fsdp"])
def test_lora_resumes_on_another_world_size(runs: SimpleNamespace, strategy: str) -> None:
    full, resumed = runs.tmp / strategy, runs.tmp / f"{strategy}-resumed-on-1"
    expected, got = train_losses(full)[STEPS // 2 :], train_losses(resumed)[STEPS:]
    # The first resumed step runs on the restored adapters and head: equal losses.
    assert got[0] == pytest.approx(expected[0], abs=1e-6)
    # ZeRO-3 through DeepSpeed's universal checkpoint as exactly as DCP (FSDP2): each AdamW
    # sub-group has its own step counter again after the load (see deepspeed.py).
    assert got == pytest.approx(expected, abs=LOSS_TOLERANCE)
    for split, metrics in final_metrics(full).items():
        assert final_metrics(resumed)[split]["accuracy"] == metrics["accuracy"], split


def test_fsdp_trains_a_bf16_backbone_with_fp32_adapters(runs: SimpleNamespace) -> None:
    run_dir = runs.tmp / "fsdp-bf16"
    losses = train_losses(run_dir)
    assert len(losses) == STEPS and losses[-1] < losses[0], losses
    bf16, fp32 = memory(run_dir)[0], memory(runs.tmp / "fsdp")[0]
    assert bf16["params_bytes"] < 0.6 * fp32["params_bytes"]  # the frozen backbone is bf16
    assert bf16["optimizer_bytes"] == fp32["optimizer_bytes"]  # fp32 adapters, same moments
    assert all(t.abs().max() > 0 for k, t in adapter_tensors(run_dir).items() if "lora_B" in k)


def test_zero3_offload_with_activation_checkpointing_trains(runs: SimpleNamespace) -> None:
    losses = train_losses(runs.tmp / "zero3-offload")
    assert len(losses) == 2 and all(0 < loss < 5 for loss in losses), losses


@pytest.mark.parametrize(
    "case", ["llama-cls-zero3", "qwen2-ner-zero3", "llama-cls-fsdp", "qwen2-ner-fsdp"]
)
def test_decoder_with_lora_and_a_task_head_trains(runs: SimpleNamespace, case: str) -> None:
    run_dir = runs.tmp / case
    losses = train_losses(run_dir)
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses), losses
    plan = json.loads((run_dir / "plan.json").read_text())
    assert 0 < plan["trainable_parameters"] < plan["total_parameters"] / 10
    assert any(".score." in k for k in adapter_tensors(run_dir))  # the head is saved
    config = json.loads((run_dir / "export" / "config.json").read_text())
    kind = "SequenceClassification" if "-cls-" in case else "TokenClassification"
    assert config["architectures"][0].endswith(f"For{kind}")


@pytest.mark.parametrize(
    ("strategy", "setting"),
    [("ddp", "ddp"), ("zero2", "zero2"), ("zero3", "zero3"), ("fsdp", "fsdp")],
)
def test_planner_model_states_equal_the_measured_memory_per_rank(
    runs: SimpleNamespace, tiny_model_dir: Path, strategy: str, setting: str
) -> None:
    import transformers

    from nluft.config import PeftConfig
    from nluft.memory import param_infos
    from nluft.models.peft import apply_peft
    from nluft.plan import Setting, model_state_bytes

    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), num_labels=2
    )
    params = param_infos(apply_peft(base, PeftConfig(r=4, alpha=8, dropout=0)))
    planned = model_state_bytes(params, Setting(setting), world=2)
    assert planned == memory(runs.tmp / strategy)[0]  # counts: exactly equal
