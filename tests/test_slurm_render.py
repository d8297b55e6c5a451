"""Slurm scripts come from a pure function: golden files pin them; bad layouts never submit."""

from __future__ import annotations

from pathlib import Path

import pytest
from golden_files import check_golden

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
    check_golden(golden, script)


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


NODE = {"SLURM_NNODES": "1", "SLURM_NODEID": "0"}
INJECTION = "\n#SBATCH --wrap=id\ntouch /tmp/nluft-injected\n"


@pytest.mark.parametrize(
    ("where", "cfg", "opts", "key"),
    [
        (
            "output_dir",
            config().model_copy(update={"output_dir": "/runs/x" + INJECTION}),
            None,
            "output_dir",
        ),
        ("job name", config(), SubmitOptions(job_name="j" + INJECTION), "--job-name"),
        ("partition", config(), SubmitOptions(partition="gpu" + INJECTION), "--partition"),
        ("quote", config(), SubmitOptions(account='a" --wrap="id'), "--account"),
    ],
)
def test_a_value_that_could_end_an_sbatch_line_is_refused(
    where: str, cfg: Config, opts: SubmitOptions | None, key: str
) -> None:
    with pytest.raises(NluftError) as caught:
        render_script("c.yaml", [], cfg, opts or SubmitOptions(), Path("/work"))
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and "cannot go into an #SBATCH line" in message
    assert "\n" not in message, "one line"


def test_values_with_spaces_and_shell_characters_stay_data(tmp_path: Path) -> None:
    """A run dir with a space, a job name with `$(...)`, a python path with `;`: all inert."""
    import subprocess

    cfg = config().model_copy(update={"output_dir": str(tmp_path / "my runs" / "a")})
    opts = SubmitOptions(job_name="x$(touch pwned)", python=f"{tmp_path}/py; touch pwned")
    script = render_script("c.yaml", ["train.seed=1"], cfg, opts, tmp_path)
    assert f'#SBATCH --output="{tmp_path}/my runs/a/slurm/slurm-%j.out"' in script
    assert '#SBATCH --job-name="x$(touch pwned)"' in script  # sbatch never runs #SBATCH lines
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert __import__("shlex").split(srun)[5] == f"{tmp_path}/py; touch pwned"
    # Run the script's shell lines up to srun; srun runs its command as on node 1, where the
    # "python" (a file named `py; touch pwned`) prints the arguments it gets.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text('#!/bin/sh\nSLURM_NODEID=1 exec "$@"\n')
    (stub / "scontrol").write_text("#!/bin/sh\necho n1\n")
    python = tmp_path / "py; touch pwned"
    python.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    for tool in (stub / "srun", stub / "scontrol", python):
        tool.chmod(0o755)
    env = {"PATH": f"{stub}:/usr/bin:/bin", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1", **NODE}
    proc = subprocess.run(
        ["bash", "-c", script.split("\nPID=$!")[0] + "\nwait"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert args[:3] == ["-m", "launch.cli", "launch"]
    assert args[-3:] == ["train.seed=1", f"output_dir={tmp_path}/my runs/a", "--node-rank=1"]
    assert not (tmp_path / "pwned").exists()


def test_secrets_stay_out_of_the_script_and_still_reach_the_job(tmp_path: Path) -> None:
    """A token in a --setup line or an override: job.sbatch names a variable, the job gets it."""
    import subprocess

    from launch.slurm import secret_env

    token = "hf_" + "a1B2c3D4" * 5
    opts = SubmitOptions(setup_lines=("module load x", f"export HF_TOKEN={token}"))
    overrides = ["train.seed=1", f"model.name_or_path=https://me:{token}@example.org/m"]
    script = render_script("c.yaml", overrides, config(), opts, tmp_path)
    assert token not in script
    assert "module load x" in script and "train.seed=1" in script
    secrets = secret_env(overrides, opts)
    assert set(secrets) == {"NLUFT_SECRET_SETUP_1", "NLUFT_SECRET_ARG_1"}
    # The job shell, with sbatch's environment: setup runs, srun gets the real override.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text('#!/bin/sh\necho "HF_TOKEN=$HF_TOKEN"\nprintf "%s\\n" "$@"\n')
    (stub / "scontrol").write_text("#!/bin/sh\necho n1\n")
    for tool in stub.iterdir():
        tool.chmod(0o755)
    (tmp_path / "module").write_text("")  # `module load x` needs a command named module
    env = {"PATH": f"{stub}:/usr/bin:/bin", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1", **NODE}
    head = script.split("\nPID=$!")[0].replace("module load x", "true") + "\nwait"
    proc = subprocess.run(
        ["bash", "-c", head],
        cwd=tmp_path,
        env={**env, **secrets},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"HF_TOKEN={token}" in lines and overrides[1] in lines
    # Without the environment (sbatch --export=NONE) the job stops with one clear line.
    proc = subprocess.run(
        ["bash", "-c", head], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode != 0
    assert "NLUFT_SECRET_SETUP_1: set by nluft submit in the job environment" in proc.stderr
