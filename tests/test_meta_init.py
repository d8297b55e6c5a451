"""FSDP2 meta-device initialisation (strategy.fsdp_meta_init, on by default) on 2 gloo ranks.

One torchrun launch of tests/meta_init_check.py builds each case the way `nluft train` does
under fsdp: the pre-trained weights stay placeholders until `fully_shard` has split the model on
the meta device, then each rank reads only its rows from the safetensors file. The oracle is the
ordinary single-process `build_model` from the same seed: the gathered state dict must equal it
tensor for tensor (head, LoRA adapters, grown embedding rows, dtypes), and the backbone must equal
the checkpoint file. Peak memory is measured by benchmarks/load_memory.py (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from distributed_runs import free_port, write_config
from test_peft_distributed import tiny_decoder

from nluft.config import load_config
from nluft.errors import NluftError
from nluft.models.lazy import INDEX_FILE

pytestmark = pytest.mark.distributed

BF16 = ["model.torch_dtype=bfloat16", "train.precision=bf16"]
LORA = ["peft.r=4", "peft.alpha=8"]
ZERO3 = ["strategy.name=deepspeed", "strategy.zero_stage=3"]
ZERO3_CASES = ("classification", "classification-lora", "relation", "llama-lora")


def sharded_files(out: Path, model: Path) -> Path:
    """The tiny BERT saved as several safetensors files plus an index, as large models ship."""
    import transformers

    transformers.BertModel.from_pretrained(str(model)).save_pretrained(
        str(out), safe_serialization=True, max_shard_size="200KB"
    )
    transformers.AutoTokenizer.from_pretrained(str(model)).save_pretrained(str(out))
    assert len(list(out.glob("*.safetensors"))) > 1 and (out / INDEX_FILE).is_file()
    return out


def cases(tmp: Path, config: Path, model: Path) -> list[dict[str, Any]]:
    llama = tiny_decoder(tmp / "tiny-llama", "llama", model)
    shards = sharded_files(tmp / "tiny-bert-sharded", model)
    relation = [
        f"model.name_or_path={model}",
        f"data.cache_dir={tmp / 'cache'}",
        "data.validation_file=null",
        "data.test_file=null",
    ]
    plain = {
        "classification": (config, []),
        # peft copies the pre-trained pooler to train it in full
        "classification-lora": (config, [*LORA, "peft.modules_to_save=[pooler]"]),
        "classification-bf16": (config, BF16),  # loaded in bf16, trained in fp32
        "classification-lora-bf16": (config, [*LORA, *BF16]),
        "relation": (ROOT / "configs" / "relation.yaml", relation),  # markers grow the vocab
        "relation-lora": (ROOT / "configs" / "relation.yaml", [*relation, *LORA]),
        "llama-lora": (config, [f"model.name_or_path={llama}", *LORA]),
        "classification-sharded-files": (config, [f"model.name_or_path={shards}"]),
    }
    fsdp = [
        {"name": name, "config": str(path), "overrides": ["strategy.name=fsdp", *extra]}
        for name, (path, extra) in plain.items()
    ]
    zero3 = [
        {"name": f"zero3-{name}", "config": str(path), "overrides": [*ZERO3, *extra]}
        for name, (path, extra) in plain.items()
        if name in ZERO3_CASES
    ]
    # bf16: the oracle is the ordinary ZeRO-3 load (values, and each partition's dtype: bf16
    # base, fp32 adapters and head copy).
    bf16 = [*ZERO3, *LORA, *BF16, "peft.modules_to_save=[pooler]"]
    ordinary = {"name": "zero3-lora-bf16", "config": str(config), "overrides": bf16}
    return [*fsdp, *zero3, {**ordinary, "oracle": "ordinary-zero3"}]


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sentiment_files: dict
) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("meta-init")
    config = write_config(tmp / "tiny.yaml", tiny_model_dir, sentiment_files, tmp / "cache")
    (tmp / "cases.json").write_text(json.dumps(cases(tmp, config, tiny_model_dir)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{free_port()}"]
    cmd += [str(ROOT / "tests" / "meta_init_check.py"), str(tmp / "cases.json")]
    cmd += [str(tmp / "out.json")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r["name"]: r for r in json.loads((tmp / "out.json").read_text())}


def test_sharded_model_equals_the_single_process_model(results: dict) -> None:
    for name, result in results.items():
        assert result["mismatched"] == [], (name, result["mismatched"])
        # Nothing pre-trained was read before sharding but relation's embedding matrix: its
        # new marker rows are drawn from the old rows' mean and covariance.
        relation = name.removeprefix("zero3-") == "relation"
        early = ["encoder.embeddings.word_embeddings.weight"] if relation else []
        assert [n.replace("base_model.model.", "") for n in result["read_early"]] == early, name
        assert result["placeholders"] > 0, name
        assert result["local_fraction"] == pytest.approx(0.5, abs=0.02), name
        assert result["buffers"] and result["buffers_equal"], (name, result["buffers"])
        # The same random draws as an ordinary build: later dropout masks match too.
        assert result["rng_equal"], name


def test_backbone_is_the_checkpoint_and_the_head_is_initialised(results: dict) -> None:
    fp32 = ("classification", "classification-lora", "relation", "llama-lora")
    zero3 = [f"zero3-{name}" for name in fp32]
    for name in (*fp32, *zero3, "classification-sharded-files"):
        matches = results[name]["from_checkpoint"]
        assert matches and all(matches.values()), (name, matches)
    for name in ("classification", "relation", "zero3-classification", "zero3-relation"):
        for key, std in results[name]["head"].items():
            assert 0.01 < std < 0.04, (name, key, std)  # initializer_range 0.02, not zeros


def test_meta_init_is_an_fsdp_key(tiny_config: Path) -> None:
    with pytest.raises(NluftError, match=r"fsdp_meta_init: applies only to strategy\.name=fsdp"):
        load_config(tiny_config, ["strategy.fsdp_meta_init=false"])


def test_zero3_lazy_init_falls_back_to_the_ordinary_load(
    tiny_config: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """What cannot be read per partition loads as before (zero.Init inside from_pretrained)."""
    import torch
    import transformers

    from nluft.models.build import defers_loading

    def defers(*overrides: str) -> bool:
        cfg = load_config(tiny_config, [*ZERO3, *overrides])
        return defers_loading(cfg.model, cfg.peft)

    pickled = tmp_path / "pickled"  # no safetensors: pytorch_model.bin only
    model = transformers.BertModel.from_pretrained(str(tiny_model_dir))
    model.config.save_pretrained(str(pickled))
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    assert defers() and defers(*LORA)
    assert not defers(f"model.name_or_path={pickled}")
    assert not defers("model.name_or_path=some-org/some-hub-model")
    assert not defers(*LORA, "peft.options={init_lora_weights: pissa}")
    with pytest.raises(
        NluftError, match=r"zero3_lazy_init: applies only to strategy\.name=deepspeed"
    ):
        load_config(tiny_config, ["strategy.zero3_lazy_init=false"])
