"""Distillation, int8 export and bench-infer on tiny models (2-rank ddp runs: test_distributed.py).

One 4-layer teacher is trained per module on clean labels; students are 2-layer.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import sentiment_rows, write_csv

from nluft.cli import main as cli
from nluft.config import Config, load_config
from nluft.data import build_data
from nluft.data.collate import collate
from nluft.data.teacher_cache import TeacherLogits, save_teacher_logits
from nluft.distill import DistillLoss, check_distill, prepare_distill
from nluft.distill.loss import hidden_mse, soft_target_kl
from nluft.distill.teacher import TeacherSource
from nluft.distributed import DistEnv, build_strategy
from nluft.evaluate import evaluate_split, load_for_inference
from nluft.models import build_tokenizer
from nluft.tasks import build_task

LN3 = math.log(3.0)
# Hand arithmetic shared by the tests below (T = 2):
#   teacher logits [2 ln 3, 0] / T = [ln 3, 0]  -> p = [3/4, 1/4]
#   student logits [0, 0]                       -> q = [1/2, 1/2]
#   KL(p || q) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.75 * 0.4054651 - 0.25 * 0.6931472 = 0.1308120
KL_CASE = 0.1308120


def small_config(**distill: Any) -> Config:
    return Config.model_validate(
        {
            "task": "classification",
            "output_dir": "unused",
            "model": {"name_or_path": "unused"},
            "data": {"train_file": "unused.csv"},
            "distill": {"teacher": "unused", **distill},
        }
    )


def test_kd_loss_equals_the_hand_computed_value(tmp_path: Path) -> None:
    cfg = small_config(alpha=0.5, temperature=2.0)
    task = build_task(cfg)
    task.label_names = ["negative", "positive"]
    save_teacher_logits(tmp_path / "cache", [np.array([2 * LN3, 0.0], dtype=np.float32)])
    source = TeacherSource(TeacherLogits(tmp_path / "cache"), None, "cpu")
    loss_fn = DistillLoss(cfg, task, source, None)
    outputs = type("Out", (), {"logits": torch.zeros(1, 2)})()
    inputs = {"attention_mask": torch.ones(1, 4, dtype=torch.long)}
    loss = loss_fn(outputs, inputs, torch.tensor([0]), [0])
    # alpha * CE + (1 - alpha) * T^2 * KL = 0.5 * ln 2 + 0.5 * 4 * 0.1308120
    #                                      = 0.3465736 + 0.2616240 = 0.6081976
    assert float(loss) == pytest.approx(0.6081976, abs=1e-6)


def test_kd_terms_for_multi_label_token_and_span_heads() -> None:
    t = 2.0
    # Multi-label, one label: teacher 0 / T -> p = 1/2; student 2 ln 3 / T = ln 3 -> q = 3/4.
    # Binary KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 0.5 * -0.4054651 + 0.5 * 0.6931472
    #           = 0.1438410
    multi = soft_target_kl(
        "multi_label", torch.tensor([[2 * LN3]]), torch.zeros(1, 1), t, torch.zeros(1), None
    )
    assert float(multi) == pytest.approx(0.1438410, abs=1e-6)
    # Tokens: the scored token is the classification case; the unscored one (label -100) has a
    # very different teacher and must not count: mean over scored tokens = 0.1308120.
    student = torch.zeros(1, 2, 2)
    teacher = torch.tensor([[[2 * LN3, 0.0], [-9.0, 9.0]]])
    labels = torch.tensor([[0, -100]])
    token = soft_target_kl("token", student, teacher, t, labels, torch.ones(1, 2))
    assert float(token) == pytest.approx(KL_CASE, abs=1e-6)
    # Spans: 3 positions, the last is padding (its huge teacher logit must be ignored). Start:
    # the classification case over 2 positions (0.1308120); end: teacher = student (0).
    # Mean of start and end = 0.0654060.
    student = torch.tensor([[[0.0, 1.0], [0.0, 2.0], [-5.0, 0.0]]])
    teacher = torch.tensor([[[2 * LN3, 1.0], [0.0, 2.0], [99.0, 99.0]]])
    mask = torch.tensor([[1, 1, 0]])
    span = soft_target_kl("span", student, teacher, t, torch.zeros(1), mask)
    assert float(span) == pytest.approx(KL_CASE / 2, abs=1e-6)
    # Hidden states: student layer 1 (zeros) against teacher layer 2 (all 3.0) on the one real
    # token (the padded one is all 50.0 and ignored): mean of (0 - 3)^2 = 9.
    zeros = torch.zeros(1, 2, 4)
    teacher_states = (zeros, zeros + 7, torch.tensor([[[3.0] * 4, [50.0] * 4]]))
    mse = hidden_mse((zeros, zeros), teacher_states, [2], torch.tensor([[1, 0]]))
    assert float(mse) == pytest.approx(9.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> dict[str, Path]:
    """A trained 4-layer teacher, a random 2-layer student model, clean and noisy data."""
    import transformers

    tmp = tmp_path_factory.mktemp("distill")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    for name, layers, seed in (("tiny4", 4, 0), ("random2", 2, 1)):
        config = transformers.BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        torch.manual_seed(seed)
        transformers.BertModel(config).save_pretrained(str(tmp / name))
        tokenizer.save_pretrained(str(tmp / name))
    rows = sentiment_rows(240, seed=1)
    rng = random.Random(5)
    flip = {"positive": "negative", "negative": "positive"}
    # The student's labels are 40% wrong; the teacher learnt from clean ones: its soft targets
    # carry the signal the student's gold labels lost.
    noisy = [{**r, "label": flip[r["label"]]} if rng.random() < 0.4 else r for r in rows]
    paths = {
        "train": write_csv(tmp / "train.csv", rows),
        "noisy": write_csv(tmp / "noisy.csv", noisy),
        "validation": write_csv(tmp / "validation.csv", sentiment_rows(60, seed=2)),
        "test": write_csv(tmp / "test.csv", sentiment_rows(60, seed=3)),
        **{name: tmp / name for name in ("tiny4", "random2")},
    }
    cfg = {
        "task": "classification",
        "output_dir": str(tmp / "teacher"),
        "model": {"name_or_path": str(paths["tiny4"])},
        "data": {
            "train_file": str(paths["train"]),
            "validation_file": str(paths["validation"]),
            "test_file": str(paths["test"]),
            "max_length": 32,
            "cache_dir": str(tmp / "cache"),
        },
        "train": {
            "learning_rate": 3e-3,
            "num_train_epochs": 3,
            "per_device_train_batch_size": 16,
            "logging_steps": 5,
            "seed": 7,
        },
        "tracking": {"progress_bar": False},
    }
    paths["config"] = tmp / "tiny.yaml"
    paths["config"].write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(paths["config"])]) == 0
    paths["teacher"] = tmp / "teacher"
    paths["tmp"] = tmp
    return paths


def accuracy(run_dir: Path) -> float:
    return float(json.loads((run_dir / "results" / "test.json").read_text())["accuracy"])


def distill(files: dict[str, Path], name: str, *overrides: str) -> Path:
    out = files["tmp"] / name
    argv = ["distill", str(files["config"]), f"teacher={files['teacher']}", f"output_dir={out}"]
    assert cli([*argv, *overrides]) == 0
    return out


def test_distilled_student_beats_the_same_student_without_distillation(
    files: dict[str, Path],
) -> None:
    student = [f"data.train_file={files['noisy']}", f"model.name_or_path={files['random2']}"]
    plain = distill(files, "plain", *student, "distill.alpha=1")
    distilled = distill(files, "distilled", *student, "distill.alpha=0.1")
    assert accuracy(files["teacher"]) == 1.0
    assert accuracy(distilled) >= 0.95
    assert accuracy(distilled) >= accuracy(plain) + 0.2, (accuracy(plain), accuracy(distilled))


def prepared(files: dict[str, Path], *overrides: str) -> tuple[Any, Any, Any]:
    cfg = load_config(files["config"], [f"distill.teacher={files['teacher']}", *overrides])
    task = build_task(cfg)
    cfg = check_distill(cfg, task)
    tokenizer = build_tokenizer(cfg.model, task)
    data = build_data(cfg, task, tokenizer, is_main=True, barrier=lambda: None)
    _, loss_fn = prepare_distill(cfg, task, tokenizer, data, build_strategy(cfg, DistEnv()))
    return loss_fn, data, tokenizer


def test_cached_teacher_logits_equal_online_ones(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cached, data, _ = prepared(files, "distill.keep_every=2")
    first = capsys.readouterr().out
    again, _, _ = prepared(files, "distill.keep_every=2")
    assert "reused from" in capsys.readouterr().out and "reused" not in first
    online, _, _ = prepared(files, "distill.keep_every=2", "distill.cache=false")
    features = data.features["train"]
    for indices in ([0, 1, 2, 3], [17, 5, 230, 99, 42]):  # batches padded unlike the cache's
        batch = collate(features.select_columns(["input_ids", "attention_mask"])[indices], 0)
        want, _ = online.source(batch, indices, False)
        got, _ = cached.source(batch, indices, False)
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.equal(got, again.source(batch, indices, False)[0])
    assert len(cached.source.cached) == len(features)


def test_student_keeps_every_kth_teacher_layer(files: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    # Online soft targets with hidden-state matching (layer map by default: teacher layers 1, 3).
    online = ["distill.cache=false", "distill.hidden_weight=1"]
    student = distill(files, "every2", "distill.keep_every=2", "train.max_steps=2", *online)
    assert json.loads((student / "export" / "config.json").read_text())["num_hidden_layers"] == 2
    # The student's starting point (its config's model) is the teacher's layers 0 and 2 + head.
    init_dir = Path(load_config(student / "config.yaml").model.name_or_path)
    init = load_file(str(init_dir / "model.safetensors"))
    full = load_file(str(files["teacher"] / "export" / "model.safetensors"))
    key = "bert.encoder.layer.{}.output.dense.weight"
    assert torch.equal(init[key.format(0)], full[key.format(0)])
    assert torch.equal(init[key.format(1)], full[key.format(2)])
    assert key.format(2) not in init
    assert torch.equal(init["classifier.weight"], full["classifier.weight"])


def test_int8_export_agrees_with_fp32_and_loads_in_eval_and_predict(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = files["teacher"]
    assert cli(["export", str(run), "--quantize", "int8"]) == 0
    int8 = run / "export-int8"
    assert (int8 / "quantization.json").is_file() and not list(int8.glob("*.safetensors"))
    predictions = {}
    for name, export in (("fp32", run / "export"), ("int8", int8)):
        cfg, strategy, task, tokenizer = load_for_inference(run, [], export)
        data = build_data(cfg, task, tokenizer, is_main=True, barrier=lambda: None)
        _, predictions[name] = evaluate_split(
            strategy, task, data.examples["test"], data.features["test"], 16, 0
        )
    agree = np.mean(np.array(predictions["fp32"]) == np.array(predictions["int8"]))
    assert agree >= 0.98
    capsys.readouterr()
    own = (run / "results" / "test_predictions.jsonl").read_bytes()
    assert cli(["eval", str(run), "--export", str(int8), "--json"]) == 0
    accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    assert accuracy >= 0.95
    # The int8 predictions are saved beside the run's own fp32 ones, which stay as they were.
    assert (run / "results" / "test_predictions.jsonl").read_bytes() == own
    saved = (run / "results" / "export-int8" / "test_predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in saved]
    assert len(rows) == len(predictions["int8"])
    assert np.mean([r["gold"] == r["predicted"] for r in rows]) == pytest.approx(accuracy)
    assert cli(["predict", str(run), "--export", str(int8), "--text", "the film was great"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label"] == "positive"


def test_bench_infer_puts_every_export_in_one_table(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = files["teacher"]
    if not (run / "export-int8").is_dir():
        assert cli(["export", str(run), "--quantize", "int8"]) == 0
    out = files["tmp"] / "bench.json"
    argv = ["bench-infer", str(run), "--export", str(run / "export-int8"), "--rounds", "2"]
    assert cli([*argv, "--latency-examples", "5", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [r["quantized"] for r in result["rows"]] == [False, True]
    assert result["rows"][0]["batch1_speedup"]["median"] == 1.0
    fp32, int8 = (r["size_mb"] for r in result["rows"])
    assert int8 < fp32
    assert str(run / "export-int8") in table and "batch-1 p50 ms" in table
    assert all(len(r["metrics"]) and r["batch1_p50_ms"]["min"] > 0 for r in result["rows"])


def test_bad_distillation_setups_are_refused_in_one_line(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import transformers

    other = tmp_path / "other-tokenizer"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "film", "good"]))
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(other))
    base = ["distill", str(files["config"]), f"teacher={files['teacher']}"]
    cases = {
        f"model.tokenizer_name_or_path={other}": "differs from the teacher's",
        "distill.student_layers=[0,4]": "names a layer the teacher lacks",
        "distill.hidden_weight=1": "set distill.cache=false",
        f"distill.teacher={tmp_path}": "has no exported model",
    }
    for override, message in cases.items():
        capsys.readouterr()
        assert cli([*base, override, "--dry-run"]) == 2, override
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert cli(["distill", str(files["config"]), "--dry-run"]) == 2
    assert "teacher=RUN_DIR" in capsys.readouterr().err
    # Word-level variants keep a whole text's label: not for per-token labels.
    assert cli([*base, "task=ner", "distill.augment.copies=1", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "distill.augment" in err and "classification only" in err and "\n" not in err, err


def test_augmented_copies_follow_the_training_texts() -> None:
    from datasets import ClassLabel, Dataset, Features, Value

    from nluft.config.schema import AugmentConfig
    from nluft.data.augment import augment_split

    features = Features(
        {"text": Value("string"), "pair": Value("string"), "label": ClassLabel(names=["n", "p"])}
    )
    texts = ["a b c d", "one two three four five six", "solo"]
    rows = {"text": texts, "pair": ["x y", None, "z"], "label": [0, 1, 1]}
    dataset = Dataset.from_dict(rows, features=features)
    options = AugmentConfig(copies=3, mask_prob=0.2, drop_prob=0.2, swap_prob=0.2, seed=4)
    out = augment_split(dataset, ["text", "pair"], options, "[MASK]")
    assert len(out) == 12 and out["label"] == [0, 1, 1] * 4 and out[:3] == dataset[:]
    assert out["pair"][4] is None  # copy 1 of row 1: a missing pair stays missing
    assert out[:] == augment_split(dataset, ["text", "pair"], options, "[MASK]")[:]
    variants = out["text"][3:]
    assert len(set(variants)) > 3 and all(v.split() for v in variants)
    for variant, text in zip(variants, texts * 3, strict=True):
        assert set(variant.split()) <= {*text.split(), "[MASK]"}
    # Each operation alone, at probability 1: every word masked; one word left; neighbours swapped.
    only = {"mask_prob": 0.0, "drop_prob": 0.0, "swap_prob": 0.0, "copies": 1}
    masked = augment_split(dataset, ["text"], AugmentConfig(**{**only, "mask_prob": 1}), "[M]")
    assert masked["text"][3:] == ["[M] [M] [M] [M]", " ".join(["[M]"] * 6), "[M]"]
    dropped = augment_split(dataset, ["text"], AugmentConfig(**{**only, "drop_prob": 1}), None)
    for text, original in zip(dropped["text"][3:], texts, strict=True):
        assert len(text.split()) == 1 and text in original.split()
    swapped = augment_split(dataset, ["text"], AugmentConfig(**{**only, "swap_prob": 1}), None)
    assert swapped["text"][3:] == ["b a d c", "two one four three six five", "solo"]


def test_stopped_and_resumed_distillation_equals_the_uninterrupted_run(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2-layer student on teacher-labelled augmented data (240 texts + 240 variants), stopped
    by a real SIGUSR1 after step 6's evaluation, resumed from its stop checkpoint."""
    import os
    import signal

    from nluft.train import main as train_main

    def config(name: str) -> Config:
        overrides = [
            f"distill.teacher={files['teacher']}",
            "distill.keep_every=2",
            "distill.augment.copies=1",
            "distill.alpha=0.2",
            f"output_dir={files['tmp'] / name}",
            "train.max_steps=10",
            "train.eval_strategy=steps",
            "train.eval_steps=3",
            "train.logging_steps=1",
        ]
        return load_config(files["config"], overrides)

    def stop_after_step_6(step: int, metrics: dict[str, float]) -> bool:
        if step == 6:
            os.kill(os.getpid(), signal.SIGUSR1)
        return False

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        full = train_main(config("full"))
        stopped = train_main(config("resumed"), reporter=stop_after_step_6)
        capsys.readouterr()
        resumed = train_main(config("resumed"), resume=True)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert stopped == {"stopped_at_step": 6}
    assert "teacher logits reused from" in capsys.readouterr().out
    want, got = losses(files["tmp"] / "full"), losses(files["tmp"] / "resumed")
    assert sorted(got) == list(range(1, 11)) and got == want
    assert resumed["test"] == full["test"]
    cached = (files["tmp"] / "cache" / "teacher_logits").iterdir()
    assert 480 in {len(TeacherLogits(path)) for path in cached}  # soft targets of the variants


def records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(run_dir: Path) -> dict[int, float]:
    """Training loss per step, the last record of a step (a resumed run logs it once)."""
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}
