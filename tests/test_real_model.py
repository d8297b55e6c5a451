"""A short fine-tune of the real packaged MiniLM on the real Rotten Tomatoes sentences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, nluft

DATA = ROOT / "data" / "rotten_tomatoes" / "reviews.csv"


@pytest.mark.slow
def test_short_real_fine_tune_learns_sentiment(tmp_path: Path) -> None:
    if not DATA.is_file():
        pytest.fail(f"{DATA} is missing: run `make assets` (make test does it)")
    run_dir = tmp_path / "real"
    proc = nluft(
        "train",
        "configs/sentiment.yaml",
        f"output_dir={run_dir}",
        "train.max_steps=40",
        "train.eval_strategy=no",
        "data.max_eval_samples=300",
        f"data.cache_dir={tmp_path / 'cache'}",
        "tracking.progress_bar=false",
        timeout=600,
        check=True,
    )
    test = json.loads((run_dir / "results" / "test.json").read_text())
    # 40 steps x 32 sentences is 15% of an epoch; the full `make run` epoch reaches ~0.85.
    assert test["accuracy"] >= 0.70, test
    assert "export:" in proc.stdout
    config = json.loads((run_dir / "export" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
