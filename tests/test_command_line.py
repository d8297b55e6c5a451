"""`key=value` overrides before or after the flags, in every verb that takes them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from launch.cli import add_verbs
from nluft.cli import build_parser, parse_args


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return parse_args(build_parser(extend=add_verbs), list(argv))


# verb, its fixed arguments, a flag with its value (if any), and what the flag sets.
VERBS = [
    ("train", ["c.yaml"], ["--resume"], ("resume", True)),
    ("eval", ["runs/x"], ["--split", "validation"], ("split", "validation")),
    ("check-data", ["c.yaml"], [], None),
    ("launch", ["c.yaml"], ["--nproc-per-node", "2"], ("nproc_per_node", 2)),
    ("submit", ["c.yaml"], ["--nodes", "2"], ("nodes", 2)),
]


@pytest.mark.parametrize(("verb", "fixed", "flag", "effect"), VERBS, ids=[v[0] for v in VERBS])
def test_overrides_before_between_and_after_flags(
    verb: str, fixed: list[str], flag: list[str], effect: tuple[str, object] | None
) -> None:
    args = parse(verb, *fixed, "a.b=1", *flag, "train.seed=2", *flag, "c=x=y")
    assert args.overrides == ["a.b=1", "train.seed=2", "c=x=y"], "in the order given"
    if effect is not None:
        assert getattr(args, effect[0]) == effect[1]
    assert parse(verb, *flag, *fixed, "train.seed=2").overrides == ["train.seed=2"]
    assert parse(verb, *fixed).overrides == []


def test_unknown_flags_and_overrides_to_verbs_without_them_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("train", "c.yaml", "train.seed=1", "--nodes", "2")
    assert caught.value.code == 2
    assert "unrecognized arguments: --nodes 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        parse("export", "runs/x", "--checkpoint", "latest", "train.seed=1")
    assert caught.value.code == 2
    assert "nluft export takes no key=value overrides (got train.seed=1)" in capsys.readouterr().err


def test_launch_forwards_overrides_after_flags_to_every_rank() -> None:
    from launch.torchrun import build_plan, torchrun_args

    args = parse("launch", "c.yaml", "--nproc-per-node", "2", "strategy.name=ddp", "--resume")
    plan = build_plan(args, "runs/x", 60.0)
    assert torchrun_args(plan)[-4:] == ["train", "c.yaml", "strategy.name=ddp", "--resume"]


def test_submit_with_overrides_after_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's command line through the console script's main: the override reaches the job."""
    from launch.cli import main

    data = tmp_path / "train.csv"
    data.write_text("text,label\ngood,1\nbad,0\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "classification",
                "output_dir": str(tmp_path / "run"),
                "model": {"name_or_path": "bert-base-uncased"},
                "data": {"train_file": str(data)},
            }
        )
    )
    code = main(
        ["submit", str(config), "--nodes", "2", "strategy.name=ddp", "train.seed=1", "--dry-run"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    srun = next(line for line in out.splitlines() if line.startswith("srun "))
    assert shlex.split(srun)[-6:-3] == [str(config), "strategy.name=ddp", "train.seed=1"]
    assert "#SBATCH --nodes=2" in out
