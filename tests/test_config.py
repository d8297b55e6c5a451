"""Config loading: overrides, validation messages a user can act on, derived plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nluft.config import Config, build_plan, load_config, to_yaml
from nluft.errors import NluftError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


BASE = """
task: classification
output_dir: runs/x
model: {name_or_path: some/model}
data: {dataset_name: some/dataset}
"""


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(NluftError) as info:
        load_config(path, overrides or [])
    message = str(info.value)
    assert "\n" not in message
    return message


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, BASE),
        ["train.learning_rate=3e-5", "train.seed=5", "data.group_by_length=false"],
    )
    assert cfg.train.learning_rate == pytest.approx(3e-5)
    assert cfg.train.seed == 5
    assert cfg.data.group_by_length is False


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, BASE + "train: {learning_rte: 0.1}\n"))
    assert "unknown key 'train.learning_rte'" in message
    assert "did you mean 'train.learning_rate'" in message
    assert str(tmp_path / "cfg.yaml") in message


def test_key_in_the_wrong_section_is_pointed_to(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, BASE + "learning_rate: 0.1\n"))
    assert "did you mean 'train.learning_rate'" in message


def test_wrong_type_and_range_name_the_key(tmp_path: Path) -> None:
    assert "train.per_device_train_batch_size" in error_of(
        write(tmp_path, BASE), ["train.per_device_train_batch_size=abc"]
    )
    message = error_of(write(tmp_path, BASE), ["train.learning_rate=-1"])
    assert "train.learning_rate" in message and "greater than 0" in message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, BASE + "train:\n  seed: [1, 2\n"))
    assert "cfg.yaml:" in message and "YAML syntax error" in message


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    text = BASE.replace("data: {dataset_name: some/dataset}", "data: {train_file: nope.csv}")
    message = error_of(write(tmp_path, text))
    assert "data.train_file" in message and "nope.csv" in message


def test_bad_override_syntax(tmp_path: Path) -> None:
    assert "expected key=value" in error_of(write(tmp_path, BASE), ["train.learning_rate"])


def test_unknown_strategy(tmp_path: Path) -> None:
    assert "strategy.name" in error_of(write(tmp_path, BASE), ["strategy.name=horovod"])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), ["train.seed=9"])
    again = Config.model_validate(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    ("world", "n", "batch", "accum", "epochs", "max_steps", "steps_per_epoch", "total"),
    [
        (1, 1000, 16, 1, 3.0, -1, 63, 189),
        (2, 1000, 16, 1, 1.0, -1, 32, 32),
        (1, 1000, 16, 4, 2.0, -1, 16, 32),  # the last, partial group steps too
        (1, 1000, 16, 1, 3.0, 50, 63, 50),
        (1, 1000, 16, 1, 0.5, -1, 63, 32),
    ],
)
def test_plan(
    tmp_path: Path,
    world: int,
    n: int,
    batch: int,
    accum: int,
    epochs: float,
    max_steps: int,
    steps_per_epoch: int,
    total: int,
) -> None:
    cfg = load_config(
        write(tmp_path, BASE),
        [
            f"train.per_device_train_batch_size={batch}",
            f"train.gradient_accumulation_steps={accum}",
            f"train.num_train_epochs={epochs}",
            f"train.max_steps={max_steps}",
            "train.warmup_ratio=0.1",
        ],
    )
    plan = build_plan(cfg, world, n)
    assert plan.effective_batch == batch * world * accum
    assert plan.steps_per_epoch == steps_per_epoch
    assert plan.total_steps == total
    assert plan.warmup_steps == -(-total // 10)
