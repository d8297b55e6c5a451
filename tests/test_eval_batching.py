"""Evaluation does not depend on how features are batched (the 1-process half of exact eval).

Batches differ in composition and padding with the batch size, as they do with the number of
ranks; predictions, metrics and the loss (the mean over every scored label) must not change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_ner import ner_config, tagged_sentences, write_conll
from test_qa import FIXTURES, squad_config

from nluft.config import load_config
from nluft.data import build_data, num_windowed
from nluft.distributed import DistEnv, build_strategy
from nluft.evaluate import evaluate_split
from nluft.models import build_model, build_tokenizer
from nluft.tasks import build_task


def config_of(task: str, tmp_path: Path, model_dir: Path) -> Path:
    if task == "ner":
        sentences = tagged_sentences(12, seed=4)
        sentences.append(sentences[0] + sentences[1] + sentences[2])  # longer than max_length
        train = write_conll(tmp_path / "train.conll", sentences)
        data = {"train_file": str(train), "max_length": 16}
        return ner_config(
            tmp_path,
            model_dir,
            data | {"validation_split_percentage": 0, "test_split_percentage": 0},
        )
    path = squad_config(
        tmp_path,
        model_dir,
        {"train": FIXTURES / "validation-v2.0.json"},
        version_2_with_negative=True,
    )
    return path


@pytest.mark.parametrize("task_name", ["ner", "qa"])
def test_eval_does_not_depend_on_the_batch_size(
    tmp_path: Path, tiny_model_dir: Path, task_name: str
) -> None:
    cfg = load_config(config_of(task_name, tmp_path, tiny_model_dir), ["data.max_train_samples=15"])
    task = build_task(cfg)
    tokenizer = build_tokenizer(cfg.model, task)
    data = build_data(cfg, task, tokenizer, True, lambda: None)
    examples, features = data.examples["train"], data.features["train"]
    assert num_windowed(features) > 0
    torch.manual_seed(0)  # a random head: varied logits, no training needed
    strategy = build_strategy(cfg, DistEnv())
    strategy.setup_inference(build_model(cfg.model, task, tokenizer))
    pad = int(tokenizer.pad_token_id or 0)
    (one, by_one), (many, by_many) = (
        evaluate_split(strategy, task, examples, features, size, pad) for size in (1, 6)
    )
    assert by_one == by_many
    assert many.pop("loss") == pytest.approx(one.pop("loss"), rel=1e-6)
    assert many == one
