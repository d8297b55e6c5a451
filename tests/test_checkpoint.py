"""Checkpoint integrity: manifests catch torn or altered files; run dirs are never reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nluft.checkpoint import build_manifest, prepare_run_dir, verify_manifest
from nluft.config import Config
from nluft.errors import NluftError


def make_checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * 1000)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    (path / "MANIFEST.json").write_text(json.dumps(build_manifest(path)))
    return path


def test_intact_checkpoint_verifies(tmp_path: Path) -> None:
    assert verify_manifest(make_checkpoint(tmp_path / "step-1")) is None


def test_truncated_file_is_detected(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "step-1")
    (ckpt / "model.safetensors").write_bytes(b"x" * 10)
    assert "expected 1000" in (verify_manifest(ckpt) or "")


def test_altered_file_is_detected(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "step-1")
    (ckpt / "model.safetensors").write_bytes(b"y" * 1000)
    assert "checksum" in (verify_manifest(ckpt) or "")


def test_missing_manifest_means_incomplete(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "step-1")
    (ckpt / "MANIFEST.json").unlink()
    assert "incomplete" in (verify_manifest(ckpt) or "")


def config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "task": "classification",
            "output_dir": str(tmp_path / "run"),
            "model": {"name_or_path": "m"},
            "data": {"dataset_name": "d"},
        }
    )


def test_existing_run_dir_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    prepare_run_dir(cfg, resume=False, overwrite=False, is_main=True)
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    with pytest.raises(NluftError, match="--resume"):
        prepare_run_dir(cfg, resume=False, overwrite=False, is_main=True)
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_and_resume_keeps(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    prepare_run_dir(cfg, resume=False, overwrite=False, is_main=True)
    (tmp_path / "run" / "old.txt").write_text("old")
    prepare_run_dir(cfg, resume=True, overwrite=False, is_main=True)
    assert (tmp_path / "run" / "old.txt").exists()
    prepare_run_dir(cfg, resume=False, overwrite=True, is_main=True)
    assert not (tmp_path / "run" / "old.txt").exists()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_resume_of_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("not a run")
    with pytest.raises(NluftError, match="not an nluft run"):
        prepare_run_dir(cfg, resume=True, overwrite=False, is_main=True)
