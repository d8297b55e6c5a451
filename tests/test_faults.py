"""Faults with real processes: kill mid-checkpoint, corrupted checkpoints, a full disk, NaNs,
a crashed rank, a rank that keeps crashing, and a rank that stops answering."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

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


# --- ranks that crash or hang under `nluft launch` (torchrun's agent, 2 ranks, ddp on gloo) ---

T = TypeVar("T")
LAUNCH_TIMEOUT = 300


def launch(config: Path, run_dir: Path, restarts: int, *overrides: str) -> list[str]:
    return [
        str(Path(sys.executable).with_name("nluft")),
        "launch",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        str(restarts),
        str(config),
        "strategy.name=ddp",
        "train.per_device_train_batch_size=8",
        "train.eval_strategy=no",
        "train.logging_steps=1",
        "train.save_steps=5",
        "train.max_steps=30",
        f"output_dir={run_dir}",
        *overrides,
    ]


def launch_env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",  # what `nluft launch` sets
    }


def descendants(root: int) -> Iterator[int]:
    """Every live process below `root` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in "ZX":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        yield pid
        todo += children.get(pid, [])


def rank_pid(launcher: int, rank: int, skip: tuple[int, ...] = ()) -> int | None:
    """The worker of `rank` that torchrun's agent (the launcher process) started, by its RANK."""
    for pid in descendants(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and pid not in skip:
            return pid
    return None


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def wait_for(probe: Callable[[], T | None], proc: subprocess.Popen[str], timeout: float = 240) -> T:
    """Poll `probe` until it returns something; fail if the launch ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = probe()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(
                f"launch ended (exit {proc.returncode}) first:\n{proc.stderr.read()[-4000:]}"
            )
        time.sleep(0.05)
    pytest.fail(f"nothing after {timeout} s")


@pytest.fixture()
def launched() -> Iterator[list[subprocess.Popen[str]]]:
    """Launches started by a test; whatever is left of them is killed at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        for pid in list(descendants(proc.pid)):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.communicate(timeout=60)


def start(launched: list[subprocess.Popen[str]], argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    launched.append(proc)
    return proc


def train_steps(run_dir: Path) -> tuple[list[int], list[int], int]:
    """Steps logged before and after the resume event, and the step of the checkpoint resumed."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumes = [i for i, r in enumerate(records) if r.get("event") == "resume"]
    assert len(resumes) == 1, "resumed exactly once"
    checkpoint = int(records[resumes[0]]["checkpoint"].removeprefix("step-"))
    steps = [(i, r["step"]) for i, r in enumerate(records) if r["kind"] == "train"]
    return (
        [s for i, s in steps if i < resumes[0]],
        [s for i, s in steps if i > resumes[0]],
        checkpoint,
    )


def test_killed_rank_is_restarted_and_the_run_resumes_from_its_checkpoint(
    tiny_config: Path, tmp_path: Path, launched: list[subprocess.Popen[str]]
) -> None:
    reference = tmp_path / "reference"
    done = subprocess.run(
        launch(tiny_config, reference, 0),
        cwd=ROOT,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = tmp_path / "crashed"
    proc = start(launched, launch(tiny_config, run_dir, 1))
    wait_for(lambda: checkpoints(run_dir), proc)
    victim = wait_for(lambda: rank_pid(proc.pid, 1), proc)
    os.kill(victim, signal.SIGSTOP)  # freeze it, check that training is not over, then kill it
    assert int(checkpoints(run_dir)[-1].removeprefix("step-")) < 30, "killed mid-training"
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, err[-4000:]
    before, after, resumed_at = train_steps(run_dir)
    assert before == list(range(1, len(before) + 1)), "no step lost before the crash"
    assert resumed_at <= len(before) < resumed_at + 5, "resumed from the latest checkpoint"
    assert after == list(range(resumed_at + 1, 31)), "only the steps since it were redone"
    final = json.loads((run_dir / "results" / "test.json").read_text())
    expected = json.loads((reference / "results" / "test.json").read_text())
    assert final == pytest.approx(expected, abs=1e-6), "same result as the run without a crash"


def test_a_rank_that_keeps_crashing_ends_the_job_after_k_restarts(
    tiny_config: Path, tmp_path: Path, launched: list[subprocess.Popen[str]]
) -> None:
    run_dir = tmp_path / "crash-loop"
    proc = start(launched, launch(tiny_config, run_dir, 1))
    killed: list[int] = []
    for _ in range(2):  # the first attempt and its one restart
        victim = wait_for(lambda: rank_pid(proc.pid, 1, skip=tuple(killed)), proc)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
    _, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == (
        "nluft launch: rank 1 died (SIGKILL); the workers failed 2 times; giving up after "
        f"--max-restarts 1; continue from the latest checkpoint with: nluft launch "
        f"--nproc-per-node 2 --max-restarts 1 {tiny_config} strategy.name=ddp "
        "train.per_device_train_batch_size=8 train.eval_strategy=no "
        f"train.logging_steps=1 train.save_steps=5 train.max_steps=30 output_dir={run_dir} --resume"
    )


def test_a_rank_that_stops_answering_ends_the_job_within_the_timeout(
    tiny_config: Path, tmp_path: Path, launched: list[subprocess.Popen[str]]
) -> None:
    run_dir = tmp_path / "hang"
    argv = launch(tiny_config, run_dir, 0, "strategy.timeout_s=15", "train.max_steps=2000")
    proc = start(launched, argv)
    wait_for(lambda: checkpoints(run_dir), proc)
    victim = wait_for(lambda: rank_pid(proc.pid, 1), proc)
    os.kill(victim, signal.SIGSTOP)
    stopped = time.time()
    _, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    took = time.time() - stopped
    assert proc.returncode == 1, err[-4000:]
    assert 15 <= took < 15 + 20, f"the job ended {took:.0f} s after the rank stopped"
    named = re.search(rf"nluft: error: rank 1 stopped answering \(pid {victim} .*\n", err)
    assert named and "killed it (SIGKILL)" in named[0] and "strategy.timeout_s=15" in named[0]
    assert "nluft launch: rank 1 died (SIGKILL)" in err.strip().splitlines()[-1]
    assert not is_alive(victim), "the stopped process was killed"
    assert not list(descendants(proc.pid))


ZERO_GROUP_PROBE = """
import sys, time
import torch, torch.distributed as dist
from deepspeed.utils import groups
from nluft.config import load_config
from nluft.distributed import read_dist_env
from nluft.distributed.deepspeed import DeepSpeedStrategy

cfg = load_config(sys.argv[1], ["strategy.name=deepspeed", "strategy.timeout_s=2"])
env = read_dist_env()
DeepSpeedStrategy(cfg, env)
if env.rank == 1:
    time.sleep(12)  # never joins: rank 0's all-reduce must give up after 2 s, not 30 min
    sys.exit(0)
started = time.time()
try:
    dist.all_reduce(torch.ones(1), group=groups._get_data_parallel_group())
except RuntimeError:
    print(f"gave up after {time.time() - started:.1f} s")
"""


def test_zero_collectives_give_up_after_strategy_timeout(
    tiny_config: Path, tmp_path: Path, launched: list[subprocess.Popen[str]]
) -> None:
    """DeepSpeed's own data-parallel group gets strategy.timeout_s too (torch's default: 30 min)."""
    script = tmp_path / "probe.py"
    script.write_text(ZERO_GROUP_PROBE)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = start(launched, [*torchrun, str(script), str(tiny_config)])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-4000:]
    seconds = float(re.findall(r"gave up after ([\d.]+) s", out)[0])
    assert 2 <= seconds < 8


def test_heartbeats_name_and_kill_only_the_rank_that_stopped(tmp_path: Path) -> None:
    """The diagnosis alone: rank 0's thread beats; rank 1 is a stopped process on this host.

    Ranks 2 and 3 are gone and their pids run other processes: one started at another time, one
    at the very same time but with another command line (as after an exec). Neither is killed.
    """
    import hashlib

    from nluft.distributed.env import DistEnv
    from nluft.distributed.heartbeat import Beat, Heartbeat, cmdline_hash, start_time
    from nluft.errors import NluftError

    procs = [subprocess.Popen(["sleep", "120"]) for _ in range(3)]
    frozen, bystander, same_start = procs
    os.kill(frozen.pid, signal.SIGSTOP)
    host = __import__("socket").gethostname()
    beats = tmp_path / "heartbeats"
    beats.mkdir()
    then = time.time() - 20
    other_program = hashlib.sha256(b"python\0-m\0nluft\0train\0").hexdigest()
    written = [
        Beat(1, 7, 9, frozen.pid, host, start_time(frozen.pid), cmdline_hash(frozen.pid), then),
        Beat(2, 3, 9, bystander.pid, host, "1", cmdline_hash(bystander.pid), then),
        Beat(3, 3, 9, same_start.pid, host, start_time(same_start.pid), other_program, then),
    ]
    for beat in written:
        (beats / f"rank-{beat.rank}.json").write_text(json.dumps(beat.__dict__))
    heartbeat = Heartbeat(tmp_path, DistEnv(rank=0, world_size=4), lambda: 9)
    heartbeat.start()
    try:
        with pytest.raises(NluftError) as caught:
            heartbeat.explain(RuntimeError("Timed out waiting 15000ms for recv\nmore"), 15)
        assert frozen.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None and same_start.poll() is None
    finally:
        heartbeat.stop()
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
    message = str(caught.value)
    assert message.startswith(f"rank 1 stopped answering (pid {frozen.pid} on {host}, last ")
    assert f"at step 9); killed it (SIGKILL); rank 2 died (pid {bystander.pid}" in message
    assert f"at step 9); rank 3 died (pid {same_start.pid} on {host}" in message
    assert message.endswith(
        "rank 0 gave up on a collective (strategy.timeout_s=15): Timed out waiting 15000ms "
        "for recv; resume with --resume"
    )
    assert not (beats / "rank-0.json").exists()
