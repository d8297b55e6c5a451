"""The launcher's pure parts: torchrun's command line, flag checks, and a fast `nluft --help`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from launch.cli import main as launch_main
from launch.torchrun import build_plan, failure_message, torchrun_args
from nluft.cli import build_parser
from nluft.errors import NluftError


def parse(*argv: str) -> argparse.Namespace:
    from launch.torchrun import add_parser

    return build_parser(extend=add_parser).parse_args(["launch", *argv])


def test_one_node_gets_a_free_port_and_c10d() -> None:
    plan = build_plan(
        parse("--nproc-per-node", "2", "cfg.yaml", "strategy.name=ddp"), "runs/x", 600
    )
    args = torchrun_args(plan)
    assert args[:4] == [
        "--nnodes=1",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
    ]
    assert args[5:] == [
        "--rdzv-conf=join_timeout=600,is_host=1",
        "--max-restarts=0",
        "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
        "--module",
        "nluft",
        "train",
        "cfg.yaml",
        "strategy.name=ddp",
    ]
    assert "29500" not in " ".join(args)


def test_multi_node_shares_a_derived_job_id_and_node_0_hosts() -> None:
    flags = ["--nnodes", "2", "--rdzv-endpoint", "n1:29400", "cfg.yaml"]
    node0 = torchrun_args(build_plan(parse(*flags, "--node-rank", "0"), "runs/x", 60))
    node1 = torchrun_args(build_plan(parse(*flags, "--node-rank", "1"), "runs/x", 60))
    assert node0[4] == node1[4] and node0[4].startswith("--rdzv-id=nluft-")
    assert "--rdzv-conf=join_timeout=60,is_host=1" in node0
    assert "--rdzv-conf=join_timeout=60,is_host=0" in node1


def test_restarts_resume_from_the_last_checkpoint() -> None:
    args = torchrun_args(build_plan(parse("--max-restarts", "2", "cfg.yaml"), "runs/x", 600))
    assert "--max-restarts=2" in args and args[-1] == "--resume"


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (["--nnodes", "2", "cfg.yaml"], "--rdzv-endpoint"),
        (
            ["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1", "cfg.yaml"],
            "--node-rank",
        ),
        (["--rdzv-endpoint", "nohost", "cfg.yaml"], "--rdzv-endpoint"),
        (["--nproc-per-node", "0", "cfg.yaml"], "--nproc-per-node"),
        (["--max-restarts", "1", "--overwrite", "cfg.yaml"], "--overwrite"),
    ],
)
def test_bad_flags_name_the_flag(flags: list[str], key: str) -> None:
    with pytest.raises(NluftError, match=key):
        build_plan(parse(*flags), "runs/x", 600)


def test_failure_message_names_the_cause_the_restarts_and_the_resume_command() -> None:
    args = parse("--nproc-per-node", "2", "--max-restarts", "3", "c.yaml", "strategy.name=ddp")
    # torchrun reports a signal as a negative exit code; SIGTERM (-15) is its own stopping.
    assert failure_message({0: -15, 1: -9}, args) == (
        "nluft launch: rank 1 died (SIGKILL); the workers failed 4 times; giving up after "
        "--max-restarts 3; continue from the latest checkpoint with: nluft launch "
        "--nproc-per-node 2 --max-restarts 3 c.yaml strategy.name=ddp --resume"
    )
    once = failure_message({0: 1, 1: -15}, parse("c.yaml", "--overwrite"))
    assert once.startswith(
        "nluft launch: rank 0 exited with code 1; not restarted (--max-restarts 0);"
    )
    assert once.endswith("nluft launch c.yaml --resume")


def test_launch_with_a_bad_config_exits_2_before_starting_anything(
    tiny_config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert launch_main(["launch", "--nproc-per-node", "2", str(tiny_config), "train.lr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.lr'" in err and err.strip().count("\n") == 0


def test_help_imports_no_heavy_library() -> None:
    """`nluft --help` stays fast: neither torch nor transformers is imported to print it."""
    code = (
        "import sys\n"
        "from launch.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for verb in ("train", "eval", "predict", "export", "launch"):
        assert verb in proc.stdout


def test_a_stopped_node_says_where_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step comes from the stop the ranks recorded after this launch started, not before."""
    import json
    import signal
    import time

    from launch.torchrun import stopped

    old = {"step": 5, "kind": "event", "time": time.time() - 100, "event": "stopped"}
    new = {"step": 26, "kind": "event", "time": time.time(), "event": "stopped"}
    (tmp_path / "metrics.jsonl").write_text(f"{json.dumps(old)}\n{json.dumps(new)}\n{{cut")
    args = parse("cfg.yaml", "train.seed=1")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        monkeypatch.setenv("NLUFT_REQUEUE", "launcher")
        assert stopped(args, str(tmp_path), time.time() - 10, signal.SIGUSR1) == 3
        monkeypatch.delenv("NLUFT_REQUEUE")
        assert stopped(args, str(tmp_path), time.time() + 10, signal.SIGTERM) == 128 + 15
        assert stopped(args, str(tmp_path), time.time() + 10, None) == 3  # every rank exited 3
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert capsys.readouterr().err.splitlines() == [
        "nluft launch: node 0: run stopped at step 26 for a requeue",
        "nluft launch: node 0: stopped by SIGTERM before the run checkpointed",
        "nluft launch: node 0: run stopped on request (checkpoint written); continue with: "
        "nluft launch cfg.yaml train.seed=1 --resume",
    ]
