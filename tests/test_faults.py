"""Faults with real processes: kill mid-checkpoint, corrupted checkpoints, a full disk."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, nluft

from nluft.checkpoint import verify_manifest


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))


def test_kill_during_checkpoint_write_keeps_the_previous_one(
    tiny_config: Path, minilm_dir: Path, tmp_path: Path
) -> None:
    # The real MiniLM makes a checkpoint large enough (~270 MB with optimizer) to kill mid-write.
    run_dir = tmp_path / "killed"
    args = [
        "train",
        str(tiny_config),
        f"model.name_or_path={minilm_dir}",
        "train.max_steps=12",
        "train.save_steps=4",
        "train.eval_strategy=no",
        "train.per_device_train_batch_size=8",
        "train.logging_steps=1",
        "train.learning_rate=5e-5",
        "train.save_total_limit=5",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nluft", *args, f"output_dir={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    torn = run_dir / "checkpoints" / ".tmp-step-00000008"
    deadline = time.time() + 300
    while not torn.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert torn.exists(), "killed while step 8 was being written"
    assert checkpoints(run_dir) == ["step-00000004"]
    assert verify_manifest(run_dir / "checkpoints" / "step-00000004") is None
    resumed = nluft(*args, f"output_dir={run_dir}", "--resume", check=True, timeout=600)
    assert "resumed from" in resumed.stderr and "step-00000004" in resumed.stderr
    steps = [
        json.loads(x)["step"]
        for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert sorted(set(steps)) == list(range(1, 13)), "every step done; only 5-8 were redone"
    assert not torn.exists(), "the torn checkpoint was replaced by a complete one"


def test_corrupted_latest_checkpoint_is_skipped_with_a_warning(
    tiny_config: Path, tmp_path: Path
) -> None:
    args = [
        "train.max_steps=12",
        "train.save_steps=4",
        "train.eval_strategy=no",
        "train.save_total_limit=3",
        "train.load_best_model_at_end=false",
    ]
    reference = tmp_path / "reference"
    nluft("train", str(tiny_config), *args, f"output_dir={reference}", check=True)
    run_dir = tmp_path / "damaged"
    shutil.copytree(reference, run_dir)
    (run_dir / "config.yaml").write_text(
        (run_dir / "config.yaml").read_text().replace(str(reference), str(run_dir))
    )
    shutil.rmtree(run_dir / "results")
    weights = run_dir / "checkpoints" / "step-00000012" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = nluft("train", str(tiny_config), *args, f"output_dir={run_dir}", "--resume", check=True)
    assert "skipping checkpoint" in proc.stderr and "step-00000012" in proc.stderr
    assert "checksum mismatch" in proc.stderr
    assert "resumed from" in proc.stderr and "step-00000008" in proc.stderr
    final = json.loads((run_dir / "results" / "test.json").read_text())
    expected = json.loads((reference / "results" / "test.json").read_text())
    assert final["loss"] == pytest.approx(expected["loss"], abs=1e-6)


def test_resume_refuses_to_start_over_when_every_checkpoint_is_damaged(
    tiny_config: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "broken"
    args = ["train.max_steps=4", "train.save_steps=2", "train.eval_strategy=no"]
    nluft("train", str(tiny_config), *args, f"output_dir={run_dir}", check=True)
    for ckpt in (run_dir / "checkpoints").glob("step-*"):
        (ckpt / "MANIFEST.json").unlink()
    proc = nluft("train", str(tiny_config), *args, f"output_dir={run_dir}", "--resume")
    assert proc.returncode == 2
    assert "refusing to start from scratch" in proc.stderr


@pytest.fixture()
def small_disk(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_the_save_cleanly_and_keeps_earlier_checkpoints(
    tiny_config: Path, small_disk: Path
) -> None:
    run_dir = small_disk / "run"
    proc = nluft(
        "train",
        str(tiny_config),
        "train.max_steps=60",
        "train.save_steps=2",
        "train.save_total_limit=100",
        "train.eval_strategy=no",
        f"output_dir={run_dir}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "could not be written" in proc.stderr and "No space left" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("nluft: error:")
    kept = checkpoints(run_dir)
    assert kept, "the checkpoints written before the disk filled are still there"
    assert all(verify_manifest(run_dir / "checkpoints" / name) is None for name in kept)
    assert not list((run_dir / "checkpoints").glob(".tmp-*")), "partial files removed"
    assert not (run_dir / "export").exists(), "the run did not go on as if it had saved"


def test_nan_loss_skips_updates_then_stops_without_a_broken_model(
    tiny_config: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "nan"
    # Class weights of zero make cross-entropy 0/0 = NaN on every step, on every rank.
    proc = nluft(
        "train",
        str(tiny_config),
        f"output_dir={run_dir}",
        "classification.class_weights=[0.0, 0.0]",
        "train.max_bad_steps=3",
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nluft: error: training diverged: 3 steps in a row") and "step 3" in last
    assert proc.stderr.count("update skipped") == 3
    assert not (run_dir / "export").exists(), "never exports a NaN model"
    assert not list((run_dir / "checkpoints").glob("step-*")), "no checkpoint of a faulty step"
