"""W&B tracking read back from real offline run files, rank gating, secrets, and `nluft report`.

The `.wandb` files are decoded with wandb's own protobuf schema (see wandb_files.py).
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import ROOT, nluft
from wandb_files import Segment, clean_env, read_segments

FAKE_KEY = "0123456789abcdef0123456789abcdeffakekey9"  # 40 characters, like a real W&B key
# A token passed as a value (an override on the command line): redacted by its shape.
URL_TOKEN = "hf_" + "Q7w" * 12
SECRET_NAME = f"https://me:{URL_TOKEN}@runs.example.org"
SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_ARRAY_JOB_ID": "4240",
    "SLURM_ARRAY_TASK_ID": "2",
    "SLURM_JOB_NODELIST": "n[1-2]",
}


class Launch(NamedTuple):
    """How the training command starts, and what that launch should record and return."""

    command: list[str]
    overrides: list[str]
    stop_code: int  # exit code after SIGTERM (checkpointed either way)
    world_size: int
    strategy: str


NLUFT = [sys.executable, "-m", "nluft"]
LAUNCHES = {
    "one-process": Launch([*NLUFT, "train"], [], 3, 1, "single"),
    # torchrun's agent forwards SIGTERM to the ranks, which checkpoint and exit 3; so does
    # `nluft launch`, with one line saying where the run stopped.
    # Batch 4 per rank keeps the effective batch, so both launches make the same 60 steps.
    "ddp-2-ranks": Launch(
        [str(Path(sys.executable).with_name("nluft")), "launch", "--nproc-per-node", "2"],
        ["strategy.name=ddp", "train.per_device_train_batch_size=4"],
        3,
        2,
        "ddp",
    ),
}
TOTAL_STEPS = 60  # 240 examples / batch 8 x 2 epochs


# --- one tracked run, stopped by SIGTERM and resumed ---------------------------------------------


@dataclass
class TrackedRun:
    run_dir: Path
    home: Path
    segments: list[Segment]
    outputs: list[str]
    env: dict[str, str]
    launch: str
    started: float
    command: list[str]


@pytest.fixture(scope="module", params=list(LAUNCHES))
def tracked(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    sentiment_files: dict[str, Path],
) -> TrackedRun:
    import yaml

    launch = LAUNCHES[request.param]
    tmp = tmp_path_factory.mktemp("tracking")
    home = tmp / "home"
    home.mkdir()
    run_dir = tmp / "run"
    cfg = {
        "task": "classification",
        "output_dir": str(run_dir),
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {
            **{f"{s}_file": str(sentiment_files[s]) for s in ("train", "validation", "test")},
            "max_length": 32,
            "cache_dir": str(tmp / "cache"),
        },
        "train": {
            "learning_rate": 3e-3,
            "num_train_epochs": 2,
            "per_device_train_batch_size": 8,
            "eval_strategy": "steps",
            "eval_steps": 20,
            "save_steps": 10,
            "logging_steps": 2,
            "seed": 7,
        },
        "tracking": {"progress_bar": False, "wandb": {"enabled": True, "tags": ["ci", "tiny"]}},
    }
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [*launch.command, str(config), *launch.overrides, f"tracking.wandb.name={SECRET_NAME}"]
    started = time.time()
    # First start: mode online but no API key anywhere and no TTY -> offline, never a prompt.
    first = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=clean_env(home, **SLURM),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not list((run_dir / "checkpoints").glob("step-*")) and time.time() < deadline:
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.005)
    first.send_signal(signal.SIGTERM)  # as Slurm does before a requeue
    out1, err1 = first.communicate(timeout=240)
    assert first.returncode == launch.stop_code, err1[-3000:]
    # The requeued job: same run dir, restart count 1, a (fake) API key in the environment.
    env = clean_env(home, **SLURM, SLURM_RESTART_COUNT="1", WANDB_API_KEY=FAKE_KEY)
    second = subprocess.run(
        [*cmd, "tracking.wandb.mode=offline", "tracking.wandb.log_model=true", "--resume"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    segments = read_segments(run_dir)
    outputs = [out1, err1, second.stdout, second.stderr]
    return TrackedRun(run_dir, home, segments, outputs, env, request.param, started, cmd)


def test_restarted_job_is_one_wandb_run_with_the_saved_id(tracked: TrackedRun) -> None:
    saved = (tracked.run_dir / "wandb_run_id").read_text().strip()
    assert len(tracked.segments) == 2, "one segment per process"
    assert {seg.run.run_id for seg in tracked.segments} == {saved}
    for seg in tracked.segments:
        assert seg.run.project == "nluft"
        assert seg.run.run_group == "slurm-array-4240", "array jobs are grouped by default"
        assert list(seg.run.tags) == ["ci", "tiny"]


def test_one_wandb_run_whatever_the_number_of_ranks(tracked: TrackedRun) -> None:
    """Rank 0 alone starts W&B: one run folder per process start, all of the saved id."""
    saved = (tracked.run_dir / "wandb_run_id").read_text().strip()
    folders = sorted(p.name for p in (tracked.run_dir / "wandb").glob("*-run-*"))
    assert len(folders) == 2 and all(name.endswith(f"-{saved}") for name in folders), folders
    # Nothing from another rank in the default places W&B writes to (cwd, HOME).
    elsewhere = [ROOT / "wandb", tracked.home / "wandb", tracked.home / ".config" / "wandb"]
    stray = [
        p
        for d in elsewhere
        if d.is_dir()
        for p in d.rglob("*")
        if p.stat().st_mtime >= tracked.started
    ]
    assert not stray, stray


def test_resumed_run_continues_the_step_axis(tracked: TrackedRun) -> None:
    first, second = tracked.segments
    for seg in tracked.segments:
        steps = [row["_step"] for row in seg.history]
        assert steps == sorted(set(steps)), "W&B steps strictly increase within a process"
    assert min(second.steps("train/loss")) > max(first.steps("train/loss"))
    logged = first.steps("train/loss") + second.steps("train/loss")
    assert logged == list(range(2, TOTAL_STEPS + 1, 2)), "every logged step exactly once"
    assert first.steps("event/stopped") and first.steps("event/checkpoint")
    assert second.steps("event/resume") == [max(first.steps("event/stopped")) + 1]


def test_expected_metric_keys_and_summary(tracked: TrackedRun) -> None:
    keys = {k for seg in tracked.segments for row in seg.history for k in row}
    for key in (
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/examples_per_s",
        "train/tokens_per_s",
        "train/padding_efficiency",
        "train/attention_context",
        "train/rss_gb",
        "eval/validation/loss",
        "eval/validation/accuracy",
        "final/validation/accuracy",
        "final/test/accuracy",
        "final/test/macro_f1",
    ):
        assert key in keys, key
    assert "train/mfu" not in keys, "no MFU without a known peak (CPU)"
    summary = tracked.segments[-1].summary
    saved = json.loads((tracked.run_dir / "results" / "test.json").read_text())
    assert summary["final/test/accuracy"] == pytest.approx(saved["accuracy"])
    lines = (tracked.run_dir / "metrics.jsonl").read_text().splitlines()
    evaluated = {r["step"] for r in map(json.loads, lines) if r["kind"] == "eval/validation"}
    assert evaluated == {20, 40, 60}
    assert summary["global_step"] == TOTAL_STEPS and summary["best_step"] in evaluated
    models = [a for a in tracked.segments[-1].artifacts if a.type == "model"]
    assert [a.name for a in models] == [f"model-{tracked.segments[0].run.run_id}"]


def test_confusion_matrix_is_a_wandb_plot_of_the_saved_counts(tracked: TrackedRun) -> None:
    panel = tracked.segments[-1].config["_wandb/visualize/final/test/confusion_matrix"]
    assert panel["panel_config"]["panelDefId"] == "wandb/confusion_matrix/v1"
    [row] = [
        r for r in tracked.segments[-1].history if "final/test/confusion_matrix_table/path" in r
    ]
    path = row["final/test/confusion_matrix_table/path"]
    [table] = list(tracked.run_dir.glob(f"wandb/offline-run-*/files/{path}"))
    saved = json.loads((tracked.run_dir / "results" / "test_confusion_matrix.json").read_text())
    labels = saved["labels"]
    counts = {
        (labels[r], labels[p]): n
        for r, row_counts in enumerate(saved["matrix"])
        for p, n in enumerate(row_counts)
    }
    assert {(a, p): n for a, p, n in json.loads(table.read_text())["data"]} == counts


def test_config_holds_the_resolved_config_and_the_job(tracked: TrackedRun) -> None:
    first, second = (seg.config for seg in tracked.segments)
    assert second["train"]["learning_rate"] == 3e-3
    assert second["tracking"]["wandb"]["enabled"] is True
    assert second["model"]["name_or_path"].endswith("tiny-bert0")
    job = second["run"]
    launch = LAUNCHES[tracked.launch]
    assert (job["world_size"], job["strategy"]) == (launch.world_size, launch.strategy)
    assert job["precision"] == "fp32"
    assert job["total_steps"] == TOTAL_STEPS and job["effective_batch"] == 8
    assert (job["slurm_job_id"], job["slurm_array_task_id"]) == ("4242", "2")
    assert job["slurm_node_list"] == "n[1-2]"
    assert (first["run"]["slurm_restart_count"], job["slurm_restart_count"]) == (0, 1)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert job["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")


@pytest.mark.parametrize("secret", [FAKE_KEY, URL_TOKEN])
def test_no_secret_in_run_dir_logs_or_config(tracked: TrackedRun, secret: str) -> None:
    needle = secret.encode()
    files = [p for p in tracked.run_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) > 20
    leaked = [str(p) for p in files if needle in p.read_bytes()]
    assert not leaked, leaked
    assert not any(secret in text for text in tracked.outputs)
    assert secret not in json.dumps([seg.config for seg in tracked.segments])


def test_a_secret_value_reaches_wandb_redacted(tracked: TrackedRun) -> None:
    shown = "https://me:<redacted>@runs.example.org"
    for seg in tracked.segments:
        assert seg.config["tracking"]["wandb"]["name"] == shown
        assert seg.run.display_name == shown
    saved = (tracked.run_dir / "config.yaml").read_text()
    assert f"name: {shown}" in saved


def test_a_stopped_launch_ends_with_one_line_and_no_traceback(tracked: TrackedRun) -> None:
    from nluft.redaction import redact_text

    err = tracked.outputs[1]
    assert "Traceback" not in err and "SignalException" not in err
    if tracked.launch == "one-process":
        return
    step = int(err.split("stopped at step ")[1].split()[0])
    lines = [x for x in err.splitlines() if x.startswith("nluft launch: node")]
    assert lines == [
        f"nluft launch: node 0: run stopped at step {step} on request (checkpoint written); "
        "continue with: nluft launch --nproc-per-node 2 "
        f"{redact_text(shlex.join(tracked.command[4:]))} --resume"
    ]


def test_logged_learning_rates_follow_the_trainer_schedule_across_the_resume(
    tracked: TrackedRun,
) -> None:
    """Oracle: transformers' linear schedule stepped once per optimizer step (the Trainer's)."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    schedule = get_scheduler("linear", optimizer, 0, TOTAL_STEPS)
    expected = {}
    for step in range(1, TOTAL_STEPS + 1):
        optimizer.step()
        schedule.step()
        expected[step] = schedule.get_last_lr()[0]  # logged after the step, as the Trainer does
    records = [
        json.loads(line) for line in (tracked.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    logged = {r["step"]: r["learning_rate"] for r in records if r["kind"] == "train"}
    assert sorted(logged) == list(range(2, TOTAL_STEPS + 1, 2))
    assert logged == pytest.approx({s: expected[s] for s in logged}, rel=1e-6)


def test_offline_fallback_says_how_to_sync(tracked: TrackedRun) -> None:
    err = tracked.outputs[1]
    assert "no API key" in err and "instead of prompting" in err
    hint = f"wandb sync {tracked.run_dir / 'wandb'}"
    assert hint in err and hint in tracked.outputs[3]
    # wandb's own CLI finds both segments under that folder (a dry run uploads nothing).
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("wandb")), "sync", "--dry-run", hint.split()[-1]],
        env=tracked.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Would sync 2 run(s)" in proc.stdout + proc.stderr


def test_report_prints_the_table_and_writes_a_plot(tracked: TrackedRun) -> None:
    from PIL import Image

    proc = nluft("report", str(tracked.run_dir), check=True, timeout=120)
    saved = json.loads((tracked.run_dir / "results" / "test.json").read_text())
    assert "final metrics" in proc.stdout and "best validation step:" in proc.stdout
    assert f"{saved['accuracy']:.4f}" in proc.stdout
    png = tracked.run_dir / "report.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 500
        gray = image.convert("L")
        inked = sum(gray.histogram()[:200]) / (image.width * image.height)
    assert inked > 0.02, "the plot has curves and text, not a blank canvas"


def test_report_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    proc = nluft("report", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "no metrics.jsonl" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


# --- rank gating and pure helpers (no subprocess) ------------------------------------------------


def tracking_config(tmp_path: Path, **wandb: Any) -> Any:
    from nluft.config import Config

    return Config.model_validate(
        {
            "task": "classification",
            "output_dir": str(tmp_path / "run"),
            "model": {"name_or_path": "unused"},
            "data": {"train_file": "unused.csv"},
            "tracking": {"wandb": {"enabled": True, "mode": "offline", **wandb}},
        }
    )


def test_tracker_on_rank_1_writes_nothing(tmp_path: Path) -> None:
    from nluft.tracking import Tracker

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = Tracker(run_dir, is_main=False, progress_bar=True)
    tracker.open(tracking_config(tmp_path), {"world_size": 2})
    tracker.start(10, 0)
    tracker.log(1, "train", {"loss": 1.0, "tokens_per_s": 5.0})
    tracker.log(1, "event", {"event": "checkpoint"})
    tracker.log_confusion_matrix("test", ["a", "b"], [[1, 0], [0, 1]])
    tracker.summarize({"test": {"accuracy": 1.0}}, {"best_step": 1}, None)
    tracker.close()
    assert list(run_dir.iterdir()) == []


def test_online_without_a_key_goes_offline(tmp_path: Path) -> None:
    from nluft.tracking import choose_mode

    assert choose_mode("online", {"HOME": str(tmp_path)})[0] == "offline"
    assert choose_mode("online", {"HOME": str(tmp_path), "WANDB_API_KEY": "k"}) == ("online", None)
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert choose_mode("online", {"HOME": str(tmp_path)}) == ("online", None)
    other = {"HOME": str(tmp_path), "WANDB_BASE_URL": "https://wandb.example.org"}
    assert choose_mode("online", other)[0] == "offline", "a key for another host does not count"
    assert choose_mode("disabled", {}) == ("disabled", None)


def test_secret_looking_config_keys_are_redacted() -> None:
    from nluft.redaction import redact

    out = redact({"hf_token": "x", "a": {"api_key": "y", "tokenizer_name_or_path": "bert"}})
    assert out == {
        "hf_token": "<redacted>",
        "a": {"api_key": "<redacted>", "tokenizer_name_or_path": "bert"},
    }


def test_peak_flops_table() -> None:
    from nluft.hardware import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "fp32") == 51e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp16") == 312e12
    assert peak_flops("NVIDIA A10G", "bf16") is None, "A10G is not the A10"
    assert peak_flops("Tesla V100-SXM2-16GB", "bf16") is None, "no bf16 tensor cores"
    assert peak_flops("x86_64", "fp32") is None


def test_bf16_hint_only_for_fp32_cpu_runs_on_amx(tmp_path: Path) -> None:
    """An fp32 run on a CPU with AMX-BF16 is told that bf16 trains faster there; no other run."""
    from nluft.hardware import bf16_hint, cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
    )
    flags = cpu_flags(str(cpuinfo))
    assert {"avx512f", "amx_bf16", "amx_tile"} <= flags
    assert "train.precision=bf16" in (bf16_hint("cpu", "fp32", flags) or "")
    assert bf16_hint("cpu", "bf16", flags) is None, "already bf16"
    assert bf16_hint("cuda", "fp32", flags) is None, "a GPU run"
    assert bf16_hint("cpu", "fp32", flags - {"amx_bf16"}) is None, "avx512_bf16 alone: not measured"
    assert cpu_flags(str(tmp_path / "absent")) == set()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("tracking.wandb.mode=sometimes", "key 'tracking.wandb.mode'"),
        ("tracking.wandb.projct=x", "did you mean 'tracking.wandb.project'"),
        ("tracking.wandb.project=a/b", "key 'tracking.wandb.project'"),
    ],
)
def test_bad_wandb_config_names_the_key(tmp_path: Path, override: str, expected: str) -> None:
    from nluft.config import apply_override, validate
    from nluft.errors import NluftError

    raw = {"task": "classification", "output_dir": "r", "model": {"name_or_path": "m"}}
    raw["data"] = {"train_file": "t.csv"}
    apply_override(raw, override)
    with pytest.raises(NluftError, match=expected.replace("(", r"\(")) as err:
        validate(raw, "cfg.yaml")
    assert "\n" not in str(err.value)


def test_after_a_hard_kill_wandb_skips_steps_it_already_has(tmp_path: Path) -> None:
    """A requeue without SIGTERM replays steps 11-12 from checkpoint 10; W&B gets each once."""
    from nluft.tracking import Tracker

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wandb_run_id").write_text("hardkill1\n")
    lines = [{"step": s, "kind": "train", "loss": 1.0} for s in range(1, 13)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    tracker = Tracker(run_dir, is_main=True, progress_bar=False)
    tracker.open(tracking_config(tmp_path), {"world_size": 1})
    tracker.log(10, "event", {"event": "resume", "checkpoint": "step-00000010"})
    for step in (11, 12, 13, 14):
        tracker.log(step, "train", {"loss": 0.5})
    tracker.log(14, "final/test", {"accuracy": 1.0})
    tracker.close()
    [segment] = [Segment.read(p) for p in run_dir.glob("wandb/offline-run-*/run-*.wandb")]
    assert segment.run.run_id == "hardkill1"
    assert segment.steps("train/loss") == [13, 14]
    assert segment.steps("event/resume") == [13] and segment.steps("final/test/accuracy") == [14]
    replayed = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert replayed[12:] == [10, 11, 12, 13, 14, 14], "metrics.jsonl keeps every record"


def test_memory_and_mfu_sample() -> None:
    from nluft.hardware import Hardware

    gpu_like = Hardware("cpu", "NVIDIA H100 80GB HBM3", 989e12, 6 * 110e6)
    sample = gpu_like.sample(tokens_per_s=2.0e5, world_size=2)
    assert sample["mfu"] == pytest.approx(2.0e5 * 6 * 110e6 / (2 * 989e12))
    assert 0 < sample["rss_gb"] < 64
    assert "mfu" not in Hardware("cpu", "x86_64", None, 1.0).sample(1.0, 1)
    # The attention term: 12 x layers x hidden per attended token (BERT-base: 12 x 12 x 768).
    with_attention = Hardware("cpu", "NVIDIA H100", 989e12, 6 * 110e6, 12 * 12 * 768)
    mfu = with_attention.sample(tokens_per_s=2.0e5, world_size=2, context=100.0)["mfu"]
    assert mfu == pytest.approx(2.0e5 * (6 * 110e6 + 12 * 12 * 768 * 100) / (2 * 989e12))


@pytest.mark.parametrize("seq_len", [16, 128])
def test_mfu_flops_agree_with_torchs_flop_counter(seq_len: int) -> None:
    """The FLOPs MFU divides by, against torch's FLOP counter on a real forward and backward.

    The counter counts matmuls only (2 FLOPs per multiply-add, backward twice the forward). The
    formula counts 6 per parameter per token for every parameter outside the embedding tables:
    it also counts biases and LayerNorm weights (no matmul) and applies the pooler and classifier
    to every token, not once per sequence. So it may exceed the count by exactly 6 x tokens x those
    parameters, never fall below it; softmax, GELU and dropout are in neither. Within that bound
    the 6N and the attention term (12 x layers x hidden x context) are both checked: at 128 tokens
    the attention term is half the total, at 16 a sixteenth.
    """
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from nluft.hardware import attention_flops_per_context, flops_per_token

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config)
    batch = 4
    with FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 1000, (batch, seq_len))).logits.sum().backward()
    counted = counter.get_total_flops()
    tokens = batch * seq_len
    formula = tokens * (flops_per_token(model) + attention_flops_per_context(model) * seq_len)
    not_matmul = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    head = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith(("bert.pooler", "classifier"))
    )
    assert counted <= formula <= counted + 6 * tokens * (not_matmul + head)
    assert formula / counted < 1.15  # tiny model: biases and norms are ~10% of its weights


def test_meter_counts_the_attention_context_of_real_tokens() -> None:
    import torch

    from nluft.train import Meter

    meter = Meter()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # lengths 3 and 5, padded to 5
    meter.add(0.5, mask, 2)
    stats = meter.summary(world_size=1)
    assert stats["padding_efficiency"] == pytest.approx(8 / 10)
    assert stats["attention_context"] == pytest.approx((3**2 + 5**2) / 8)


def test_dist_env_reads_the_slurm_job() -> None:
    from nluft.distributed.env import read_dist_env

    env = read_dist_env({**SLURM, "SLURM_RESTART_COUNT": "2", "RANK": "1", "WORLD_SIZE": "2"})
    assert (env.slurm_job_id, env.slurm_array_job_id, env.slurm_array_task_id) == (
        "4242",
        "4240",
        "2",
    )
    assert (env.slurm_restart_count, env.slurm_node_list, env.rank) == (2, "n[1-2]", 1)
    assert read_dist_env({}).slurm_restart_count == 0, "unset before the first requeue"


def test_an_evaluation_cut_short_by_a_stop_reaches_wandb_on_resume(tmp_path: Path) -> None:
    """Stopped during step 12's evaluation: the resumed run's evaluation lands just past 12."""
    from nluft.tracking import Tracker

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wandb_run_id").write_text("cuteval1\n")
    lines = [{"step": s, "kind": "train", "loss": 1.0} for s in range(1, 13)]
    lines.insert(6, {"step": 6, "kind": "eval/validation", "accuracy": 0.5})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    tracker = Tracker(run_dir, is_main=True, progress_bar=False)
    tracker.open(tracking_config(tmp_path), {"world_size": 1})
    tracker.log(6, "eval/validation", {"accuracy": 0.5})  # replayed: W&B has it
    tracker.log(12, "eval/validation", {"accuracy": 0.75})  # the one the stop cut short
    tracker.log(13, "train", {"loss": 0.5})
    tracker.close()
    [segment] = read_segments(run_dir)
    assert segment.steps("eval/validation/accuracy") == [13]
    assert segment.steps("train/loss") == [13]
