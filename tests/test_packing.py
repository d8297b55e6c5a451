"""Packed batches (`data.packing: true`) give what padded batches give: the oracle is the padded
forward of the same model (same logits, gradients, losses and metrics), on BERT, Llama and Qwen2
shapes and every kind of head; what packing cannot do exactly is refused up front, exit 2."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
import yaml
from conftest import ROOT
from test_ner import tagged_sentences, write_conll

from nluft.cli import main as cli_main
from nluft.config import Config
from nluft.errors import NluftError
from nluft.models.heads import EntityMarkerModel
from nluft.models.packing import check_packing, enable_packing, plan_pack

TINY = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
}
DECODER = {"num_attention_heads": 4, "num_key_value_heads": 2, "classifier_dropout": 0.0}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
CONFIGS = {
    "bert": lambda: transformers.BertConfig(num_attention_heads=2, **NO_DROPOUT, **TINY),
    "llama": lambda: transformers.LlamaConfig(**DECODER, **TINY),
    "qwen2": lambda: transformers.Qwen2Config(**DECODER, **TINY),
}
HEADS = {
    "sequence": transformers.AutoModelForSequenceClassification,
    "token": transformers.AutoModelForTokenClassification,
    "span": transformers.AutoModelForQuestionAnswering,
}
LENGTHS = [5, 11, 1, 8, 3]  # one sequence of a single token; the longest sets the padding


def padded_batch(token_types: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A right-padded batch of random ids (pad id 0 never appears inside a sequence)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = torch.randint(3, 100, (n,), generator=gen)
        mask[row, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_types:  # a second segment from position 2 on, as a text pair has
        batch["token_type_ids"] = ((torch.arange(ids.size(1)) >= 2) & mask.bool()).long()
    return batch


def logits_of(outputs: Any) -> torch.Tensor:
    if getattr(outputs, "logits", None) is not None:
        return outputs.logits
    return torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)


def forward_and_grads(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits at real positions (all of them for one label per sequence) and the gradients of a
    loss that weighs every real logit differently."""
    model.zero_grad()
    logits = logits_of(model(**batch))
    if logits.dim() >= 3:
        logits = logits[batch["attention_mask"].bool()]
    weights = torch.linspace(-1, 1, logits.numel()).view_as(logits)
    (logits * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def packed_shapes(model: torch.nn.Module) -> list[torch.Size]:
    """Records the shape of the input ids the embedding layer sees (packed: one row)."""
    seen: list[torch.Size] = []
    embeddings = model.get_input_embeddings()
    embeddings.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    return seen


def assert_same(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Padded vs packed on copies of one model: logits and every gradient agree (fp32)."""
    padded = copy.deepcopy(model)
    want, want_grads = forward_and_grads(padded, batch)
    enable_packing(model)
    seen = packed_shapes(model)
    got, grads = forward_and_grads(model, batch)
    assert seen == [torch.Size([1, sum(LENGTHS)])], "the backbone ran on one packed row"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_packed_logits_and_gradients_equal_padded(arch: str, head: str, attn: str) -> None:
    config = CONFIGS[arch]()
    config.num_labels = 2 if head == "span" else 3
    torch.manual_seed(0)
    model = HEADS[head].from_config(config, attn_implementation=attn)
    model.train()  # no dropout in these configs: train mode is deterministic
    assert_same(model, padded_batch(token_types=arch == "bert"))


def test_relation_markers_and_token_types_survive_packing() -> None:
    """The entity-marker head reads each sequence's own marker states, with token types."""
    config = CONFIGS["bert"]()
    torch.manual_seed(0)
    encoder = transformers.BertModel(config)
    config.num_labels, config.subject_marker_ids, config.object_marker_ids = 4, [1], [2]
    model = EntityMarkerModel(config, encoder)
    model.eval()
    batch = padded_batch(token_types=True, seed=1)
    for row, n in enumerate(LENGTHS):  # markers at different places; the 1-token row has none
        if n >= 3:
            batch["input_ids"][row, n // 3], batch["input_ids"][row, n - 1] = 1, 2
    assert_same(model, batch)


def test_lora_adapters_on_a_packed_backbone() -> None:
    import peft

    torch.manual_seed(0)
    model = HEADS["sequence"].from_config(CONFIGS["bert"](), attn_implementation="sdpa")
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    model = peft.get_peft_model(model, lora)
    for name, param in model.named_parameters():  # B starts at zero: give it a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    assert_same(model, padded_batch(token_types=True))


def test_left_padding_is_refused() -> None:
    with pytest.raises(NluftError, match="right-padded"):
        plan_pack(torch.tensor([[0, 1, 1], [1, 1, 1]]))


def config_with(tmp_path: Path, model_dir: Path, **updates: Any) -> Config:
    cfg: dict[str, Any] = {
        "task": "classification",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(model_dir)},
        "data": {"train_file": "x", "packing": True},
    }
    for section, values in updates.items():
        cfg.setdefault(section, {}).update(values)
    return Config.model_validate(cfg)


def test_what_packing_cannot_do_is_refused_with_the_key_and_the_fix(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    for strategy in ("fsdp", "deepspeed"):
        with pytest.raises(NluftError, match=f"strategy.name={strategy}.*data.packing=false"):
            check_packing(config_with(tmp_path, tiny_model_dir, strategy={"name": strategy}))
    with pytest.raises(NluftError, match=r"train\.torch_compile"):
        check_packing(config_with(tmp_path, tiny_model_dir, train={"torch_compile": True}))
    with pytest.raises(NluftError, match="distill"):
        check_packing(config_with(tmp_path, tiny_model_dir, distill={"teacher": str(tmp_path)}))
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    (roberta / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(NluftError, match=r"'roberta' is not supported.*data\.packing=false"):
        check_packing(config_with(tmp_path, roberta))
    check_packing(config_with(tmp_path, tiny_model_dir, strategy={"name": "ddp"}))


def test_dry_run_refuses_in_one_line_exit_2(
    tiny_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", str(tiny_config), "data.packing=true", "strategy.name=fsdp", "--dry-run"]
    code = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "data.packing" in err and "strategy.name=fsdp" in err


# --- whole runs: the same losses and metrics, packed or padded ------------------------------

RUN = [
    "train.max_steps=6",
    "train.per_device_train_batch_size=8",
    "train.gradient_accumulation_steps=2",
    "train.logging_steps=1",
    "train.eval_strategy=steps",
    "train.eval_steps=6",
    "train.load_best_model_at_end=false",
]


def train_records(run_dir: Path) -> tuple[list[float], dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    results = {
        split: json.loads((run_dir / "results" / f"{split}.json").read_text())
        for split in ("validation", "test")
    }
    return losses, results


def assert_runs_agree(padded: Path, packed: Path) -> None:
    want_losses, want = train_records(padded)
    losses, got = train_records(packed)
    assert len(losses) == len(want_losses) == 6
    assert losses == pytest.approx(want_losses, rel=1e-5)
    for split, metrics in want.items():
        assert got[split].keys() == metrics.keys()
        for key, value in metrics.items():
            assert got[split][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (split, key)


@pytest.fixture(scope="module")
def ner_config(tmp_path_factory: pytest.TempPathFactory, tiny_model_no_dropout: Path) -> Path:
    out = tmp_path_factory.mktemp("packing-ner")
    files = {
        f"{split}_file": str(write_conll(out / f"{split}.conll", tagged_sentences(n, seed)))
        for split, n, seed in [("train", 64, 1), ("validation", 20, 2), ("test", 20, 3)]
    }
    cfg = {
        "task": "ner",
        "output_dir": str(out / "unused"),
        "model": {"name_or_path": str(tiny_model_no_dropout)},
        "data": {"cache_dir": str(out / "cache"), "max_length": 32, **files},
        "train": {"learning_rate": 5e-3, "seed": 3},
        "tracking": {"progress_bar": False},
    }
    path = out / "ner.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def pair_config(path: Path, tiny_config: Path, model_dir: Path) -> Path:
    """The sentiment config as text pairs (token types 0/1) on the dropout-free tiny BERT."""
    cfg = yaml.safe_load(tiny_config.read_text())
    cfg["model"]["name_or_path"] = str(model_dir)
    cfg["data"]["text_pair_column"] = "text"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_packed_runs_equal_padded_runs_on_one_process(
    tmp_path: Path, tiny_config: Path, tiny_model_no_dropout: Path, ner_config: Path
) -> None:
    """Sentence-pair classification (pooler on each first token, token types) and NER."""
    pairs = pair_config(tmp_path / "pairs.yaml", tiny_config, tiny_model_no_dropout)
    for name, config in [("pairs", pairs), ("ner", ner_config)]:
        runs = {}
        for packing in ("false", "true"):
            run_dir = tmp_path / f"{name}-{packing}"
            argv = ["train", str(config), *RUN, f"data.packing={packing}", f"output_dir={run_dir}"]
            assert cli_main(argv) == 0
            runs[packing] = run_dir
        assert_runs_agree(runs["false"], runs["true"])


@pytest.mark.distributed
def test_packed_ddp_run_equals_padded_ddp_run(
    tmp_path: Path, tiny_config: Path, tiny_model_no_dropout: Path
) -> None:
    """Two ranks, one torchrun launch for both runs (tests/dist_jobs.py)."""
    pairs = pair_config(tmp_path / "pairs.yaml", tiny_config, tiny_model_no_dropout)
    ddp = [*RUN, "train.per_device_train_batch_size=4", "strategy.name=ddp"]
    jobs = [
        {"kind": "cli", "argv": ["train", str(pairs), *ddp, f"data.packing={p}", f"output_dir={d}"]}
        for p, d in [("false", tmp_path / "padded"), ("true", tmp_path / "packed")]
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    cmd += ["--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0"]
    cmd += [str(ROOT / "tests" / "dist_jobs.py"), str(tmp_path / "jobs.json")]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert_runs_agree(tmp_path / "padded", tmp_path / "packed")
