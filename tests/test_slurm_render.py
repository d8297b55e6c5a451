"""Slurm scripts come from a pure function: golden files pin them; bad layouts never submit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launch.slurm import SubmitOptions, check_layout, render_script
from nluft.config import Config
from nluft.errors import NluftError

GOLDEN = Path(__file__).parent / "golden"


def config(strategy: str = "single") -> Config:
    return Config.model_validate(
        {
            "task": "classification",
            "output_dir": "/scratch/runs/sst2",
            "model": {"name_or_path": "roberta-base"},
            "data": {"dataset_name": "glue"},
            "strategy": {"name": strategy},
        }
    )


CASES = {
    "single_node": (
        config(),
        SubmitOptions(
            partition="gpu",
            time="04:00:00",
            gpus_per_node=1,
            setup_lines=("module load cuda/12.4", "source .venv/bin/activate"),
        ),
    ),
    "array_sweep": (
        config(),
        SubmitOptions(
            array_overrides=(
                ("train.learning_rate=1e-5",),
                ("train.learning_rate=3e-5",),
                ("train.learning_rate=1e-4", "train.seed=2"),
            )
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_script_matches_golden_file(name: str) -> None:
    cfg, opts = CASES[name]
    script = render_script("configs/sst2.yaml", ["train.seed=1"], cfg, opts, Path("/home/me/nluft"))
    golden = GOLDEN / f"slurm_{name}.sbatch"
    if os.environ.get("NLUFT_UPDATE_GOLDEN"):
        golden.write_text(script)
    assert script == golden.read_text(), f"re-render with NLUFT_UPDATE_GOLDEN=1 and review {golden}"


def test_bash_accepts_the_script(tmp_path: Path) -> None:
    import subprocess

    for cfg, opts in CASES.values():
        path = tmp_path / "job.sbatch"
        path.write_text(render_script("c.yaml", [], cfg, opts, tmp_path))
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_single_strategy_on_two_nodes_is_rejected() -> None:
    with pytest.raises(NluftError, match=r"strategy\.name: 'single'"):
        check_layout(config(), SubmitOptions(nodes=2))


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (SubmitOptions(nodes=0), "--nodes"),
        (SubmitOptions(signal_seconds=2), "--signal-seconds"),
        (SubmitOptions(max_requeues=-1), "--max-requeues"),
    ],
)
def test_impossible_layouts_are_rejected(opts: SubmitOptions, message: str) -> None:
    with pytest.raises(NluftError, match=message):
        check_layout(config(), opts)
