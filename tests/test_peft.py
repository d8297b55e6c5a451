"""LoRA through `peft` on one process: per-architecture targets, config errors, dry-run counts,
trainable-only checkpoints, merged export and adapter folder, relation marker embeddings,
and activation checkpointing (which must not change the loss curve).

Runs execute in this process (dist_jobs.run_jobs) on the tiny random BERT without dropout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dist_jobs import run_jobs
from distributed_runs import (
    COMMON,
    LORA,
    SINGLE_BATCH,
    lora_reference,
    no_dropout_model,
    reference_run,
    train_losses,
    write_config,
)
from test_ner import tagged_sentences, write_conll

from nluft.cli import main as nluft_main
from nluft.config import PeftConfig
from nluft.errors import NluftError
from nluft.evaluate import evaluate_run

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def tiny_model(kind: str) -> Any:
    """A 2-layer random model of one architecture with a 3-label classification head."""
    import transformers

    decoder = {**TINY, "intermediate_size": 64, "num_key_value_heads": 2, "vocab_size": 64}
    configs = {
        "bert": transformers.BertConfig(**TINY, intermediate_size=64, vocab_size=64),
        "roberta": transformers.RobertaConfig(**TINY, intermediate_size=64, vocab_size=64),
        "deberta-v2": transformers.DebertaV2Config(**TINY, intermediate_size=64, vocab_size=64),
        "llama": transformers.LlamaConfig(**decoder),
        "qwen2": transformers.Qwen2Config(**decoder),
        "mistral": transformers.MistralConfig(**decoder),
        "gpt2": transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64),
    }
    config = configs[kind]
    config.num_labels = 3
    return transformers.AutoModelForSequenceClassification.from_config(config)


EXPECTED = {
    "bert": ({"query", "key", "value"}, {"classifier"}),
    "roberta": ({"query", "key", "value"}, {"classifier"}),
    "deberta-v2": ({"query_proj", "key_proj", "value_proj"}, {"classifier", "pooler"}),
    "llama": (
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        {"score"},
    ),
    "qwen2": (
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        {"score"},
    ),
    "mistral": (
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        {"score"},
    ),
    "gpt2": ({"c_attn", "c_proj", "c_fc"}, {"score"}),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_lora_lands_on_each_architectures_default_targets(kind: str) -> None:
    import torch

    from nluft.models.peft import apply_peft

    model = apply_peft(tiny_model(kind).to(torch.bfloat16), PeftConfig(r=2))
    targets, heads = EXPECTED[kind]
    adapted = {
        n.split(".lora_A.")[0].split(".")[-1]
        for n, _ in model.named_parameters()
        if ".lora_A." in n
    }
    assert adapted == targets
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name in trainable:  # adapters and the head's trained copy, nothing of the backbone
        assert ".lora_" in name or ".modules_to_save." in name, name
    trained_heads = {n.split(".modules_to_save.")[0].split(".")[-1] for n in trainable}
    assert heads <= trained_heads
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if name in trainable else torch.bfloat16), name
    if kind == "gpt2":
        assert model.peft_config["default"].fan_in_fan_out  # Conv1D stores weights transposed


def test_peft_options_pass_through_and_bad_ones_are_named() -> None:
    from nluft.models.peft import build_lora_config

    model = tiny_model("bert")
    lora = build_lora_config(PeftConfig(options={"use_rslora": True, "bias": "lora_only"}), model)
    assert lora.use_rslora and lora.bias == "lora_only"
    with pytest.raises(NluftError, match=r"peft\.options\.nonsense: not a peft\.LoraConfig"):
        build_lora_config(PeftConfig(options={"nonsense": 1}), model)
    with pytest.raises(NluftError, match=r"peft\.options\.r: set by nluft"):
        build_lora_config(PeftConfig(options={"r": 2}), model)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sentiment_files: dict
) -> dict[str, Path]:
    model = no_dropout_model(tmp_path_factory, tiny_model_dir)
    tmp = tmp_path_factory.mktemp("peft")
    config = write_config(
        tmp / "tiny.yaml", model, sentiment_files, tmp_path_factory.getbasetemp() / "cache"
    )
    return {"config": config, "tmp": tmp, "model": model}


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("peft.options.nonsense=1", "peft.options.nonsense: not a peft.LoraConfig option"),
        ("model.torch_dtype=bfloat16", "model.torch_dtype: bfloat16 weights"),
        ("peft.rr=4", "unknown key 'peft.rr'; did you mean 'peft.r'?"),
        ("peft.target_modules=[nope]", "peft.target_modules:"),
    ],
)
def test_bad_peft_settings_are_refused_by_dry_run(
    setup: dict[str, Path], override: str, expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = nluft_main(["train", str(setup["config"]), *LORA, override, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expect in err, err


def test_dry_run_prints_trainable_and_total_parameters(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from nluft.models.peft import apply_peft, num_parameters

    assert nluft_main(["train", str(setup["config"]), *LORA, "--dry-run"]) == 0
    out = capsys.readouterr().out
    import transformers

    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(setup["model"]), num_labels=2
    )
    trainable, total = num_parameters(apply_peft(base, PeftConfig(r=4, alpha=8, dropout=0)))
    # 2 layers x q,k,v x (32x4 + 4x32) adapter weights + the 32x2+2 classifier
    assert trainable == 2 * 3 * 256 + 66
    assert f"parameters: {trainable:,} trainable of {total:,}" in out


@pytest.fixture(scope="module")
def lora_runs(setup: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The LoRA reference run, and LoRA and full runs with activation checkpointing."""
    runs = {name: setup["tmp"] / name for name in ("lora-ckpt", "full-ckpt")}
    argv = ["train", str(setup["config"]), *COMMON, *SINGLE_BATCH]
    run_jobs(
        [
            {
                "kind": "cli",
                "argv": [
                    *argv,
                    *LORA,
                    "model.gradient_checkpointing=true",
                    f"output_dir={runs['lora-ckpt']}",
                ],
            },
            {
                "kind": "cli",
                "argv": [
                    *argv,
                    "model.gradient_checkpointing=true",
                    f"output_dir={runs['full-ckpt']}",
                ],
            },
        ]
    )
    runs["full"] = reference_run(tmp_path_factory, setup["config"])
    runs["lora"] = lora_reference(tmp_path_factory, setup["config"])
    return runs


def test_activation_checkpointing_keeps_the_loss_curve(lora_runs: dict[str, Path]) -> None:
    for plain, ckpt in (("lora", "lora-ckpt"), ("full", "full-ckpt")):
        expected, got = train_losses(lora_runs[plain]), train_losses(lora_runs[ckpt])
        assert got == pytest.approx(expected, abs=1e-5), (plain, got, expected)
    losses = train_losses(lora_runs["lora"])
    assert losses[-1] < losses[0] - 0.01, losses  # the adapters and head really train


def checkpoint_bytes(run_dir: Path) -> int:
    step = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return sum(p.stat().st_size for p in step.rglob("*") if p.is_file())


def test_lora_checkpoint_holds_only_trainable_state(lora_runs: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    lora, full = checkpoint_bytes(lora_runs["lora"]), checkpoint_bytes(lora_runs["full"])
    print(f"checkpoint bytes: lora {lora:,} full {full:,} ({lora / full:.3f})")
    assert lora < full / 20
    step = sorted((lora_runs["lora"] / "checkpoints").glob("step-*"))[-1]
    weights = load_file(str(step / "model.safetensors"))
    assert all(".lora_" in k or ".modules_to_save." in k for k in weights), list(weights)
    assert len(weights) == 2 * 3 * 2 + 2 and all(t.numel() > 0 for t in weights.values())


def test_merged_export_and_adapter_folder_give_identical_metrics(
    lora_runs: dict[str, Path],
) -> None:
    import transformers
    from peft import PeftModel

    run = lora_runs["lora"]
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(str(run / "export"))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    classify = transformers.pipeline("text-classification", model=str(run / "export"))
    assert classify("the film was good")[0]["label"] in {"negative", "positive"}
    adapter_config = json.loads((run / "export-adapter" / "adapter_config.json").read_text())
    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        adapter_config["base_model_name_or_path"],  # labels come from the folder's config.json
        config=str(run / "export-adapter"),
    )
    assert isinstance(PeftModel.from_pretrained(base, str(run / "export-adapter")), PeftModel)
    saved = json.loads((run / "results" / "test.json").read_text())
    for export in ("export", "export-adapter"):
        metrics = evaluate_run(run, "test", [], run / export)
        assert metrics["accuracy"] == saved["accuracy"], export
        assert metrics["loss"] == pytest.approx(saved["loss"], abs=1e-5), export


def test_relation_markers_get_trained_embeddings_and_ner_export_loads_in_a_pipeline(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import torch
    import transformers
    from safetensors.torch import load_file

    rel, ner = tmp_path / "rel", tmp_path / "ner"
    conll = write_conll(tmp_path / "ner.conll", tagged_sentences(80, 1))
    common = [
        f"model.name_or_path={tiny_model_dir}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.max_steps=4",
        "train.eval_strategy=no",
        "tracking.progress_bar=false",
        *LORA,
    ]
    run_jobs(
        [
            {
                "kind": "cli",
                "argv": ["train", "configs/relation.yaml", f"output_dir={rel}", *common],
            },
            {
                "kind": "cli",
                "argv": [
                    "train",
                    "configs/ner_wnut16.yaml",
                    f"output_dir={ner}",
                    f"data.train_file={conll}",
                    "data.max_length=32",
                    "ner.stride=4",
                    *common,
                ],
            },
        ]
    )
    adapter = load_file(str(rel / "export-adapter" / "adapter_model.safetensors"))
    deltas = [v for k, v in adapter.items() if "trainable_tokens_delta" in k]
    assert len(deltas) == 1 and deltas[0].shape == (10, 32)  # 2 roles x (start, end, 3 types)
    adapter_config = json.loads((rel / "export-adapter" / "adapter_config.json").read_text())
    ids = adapter_config["trainable_token_indices"]
    merged = load_file(str(rel / "export" / "model.safetensors"))
    rows = merged["encoder.embeddings.word_embeddings.weight"][ids]
    assert torch.equal(rows, deltas[0])  # the merged model carries the trained marker rows
    tag = transformers.pipeline("token-classification", model=str(ner / "export"))
    assert isinstance(tag("Carol Smith visited Tokyo ."), list)
    saved = json.loads((ner / "results" / "test.json").read_text())
    metrics = evaluate_run(ner, "test", [], ner / "export-adapter")
    assert metrics["f1"] == saved["f1"] and metrics["loss"] == pytest.approx(
        saved["loss"], abs=1e-5
    )


def test_plan_prints_every_setting_and_the_cheapest_fit(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from nluft.plan import SETTINGS

    argv = ["plan", str(setup["config"]), *LORA, "--nproc", "2", "--gpu-memory", "0.004"]
    assert nluft_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if " peft=" in line and not line.startswith("cheapest")]
    assert len(rows) == len(SETTINGS) * 2 * 2  # strategies x (full, LoRA) x checkpointing
    # 4 MiB: full fine-tuning of the 1 M-parameter model fits only with ZeRO-3 + offload.
    assert lines[-1].startswith("cheapest that fits in 0.004 GiB: zero3+offload  peft=no")
    assert nluft_main(["train", str(setup["config"]), *LORA, "--dry-run"]) == 0
    assert "memory plan: ddp            peft=yes ckpt=no" in capsys.readouterr().out
