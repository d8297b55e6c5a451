"""Secrets are redacted by shape and by name, everywhere nluft writes: config.yaml, W&B, logs."""

from __future__ import annotations

import pytest
import yaml

from nluft.config import Config, to_yaml
from nluft.redaction import redact, redact_text

HF = "hf_" + "Zx9" * 12
WANDB = "0123456789abcdef" * 2 + "01234567"  # 40 hex characters, the legacy W&B key shape


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"export HF_TOKEN={HF}", "export HF_TOKEN=<redacted>"),
        ("export HF_TOKEN=short1", "export HF_TOKEN=<redacted>"),
        (f"export WANDB_API_KEY='{WANDB}'", "export WANDB_API_KEY='<redacted>'"),
        (f"wandb login --relogin {WANDB}", "wandb login --relogin <redacted>"),
        (f"pip download {HF}", "pip download <redacted>"),
        ("https://user:s3cret@host.org/x.csv", "https://user:<redacted>@host.org/x.csv"),
        (
            "git+https://ghp_" + "a" * 36 + "@github.com/o/r",
            "git+https://<redacted>@github.com/o/r",
        ),
        ("--password hunter2 --epochs 3", "--password <redacted> --epochs 3"),
        ("hf_token: abc", "hf_token: <redacted>"),
        (
            "curl -H 'Authorization: Bearer abcdefghij12'",
            "curl -H 'Authorization: Bearer <redacted>'",
        ),
        ("local-" + "ab12" * 10, "<redacted>"),
        # Not secrets: left exactly as they are.
        (f"model.revision={WANDB}", f"model.revision={WANDB}"),  # a git commit looks the same
        ("ner token classification", "ner token classification"),
        ("ssh://git@github.com/o/r", "ssh://git@github.com/o/r"),
        ("ner.tokens_column=words", "ner.tokens_column=words"),
        ("model.tokenizer_name_or_path=bert", "model.tokenizer_name_or_path=bert"),
        ("output_dir=/runs/a:b@c", "output_dir=/runs/a:b@c"),
        ("train.learning_rate=3e-5", "train.learning_rate=3e-5"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_nested_values_by_key_and_by_shape() -> None:
    out = redact(
        {
            "hf_token": "x",
            "a": {"api_key": "y", "tokenizer_name_or_path": "bert"},
            "tags": ["ci", f"url=https://u:{HF}@h"],
            "n": 3,
        }
    )
    assert out == {
        "hf_token": "<redacted>",
        "a": {"api_key": "<redacted>", "tokenizer_name_or_path": "bert"},
        "tags": ["ci", "url=https://u:<redacted>@h"],
        "n": 3,
    }


def test_config_yaml_never_holds_a_secret_value() -> None:
    cfg = Config.model_validate(
        {
            "task": "classification",
            "output_dir": "runs/x",
            "model": {"name_or_path": f"https://me:{HF}@models.example.org/bert"},
            "data": {"dataset_name": "glue"},
            "tracking": {"wandb": {"tags": [HF, "ci"], "name": f"run with {HF}"}},
        }
    )
    saved = to_yaml(cfg)
    assert HF not in saved
    again = yaml.safe_load(saved)
    assert again["model"]["name_or_path"] == "https://me:<redacted>@models.example.org/bert"
    assert again["tracking"]["wandb"]["tags"] == ["<redacted>", "ci"]
    assert Config.model_validate(again).output_dir == "runs/x", "still a valid config"


def test_launch_prints_no_secret(capsys: pytest.CaptureFixture[str]) -> None:
    """`nluft launch` prints the torchrun command and a resume command; neither leaks."""
    import argparse

    from launch.torchrun import failure_message

    args = argparse.Namespace(
        nproc_per_node=2,
        nnodes=1,
        node_rank=0,
        rdzv_endpoint=None,
        rdzv_id=None,
        max_restarts=0,
        config="c.yaml",
        overrides=[f"model.name_or_path=https://me:{HF}@h/m"],
    )
    message = failure_message({0: 1}, args)
    assert HF not in message and "https://me:<redacted>@h/m" in message
