"""Property-based tests: whatever a user types, the config loader gives a config or one line."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nluft.config import Config, apply_override, load_config
from nluft.errors import NluftError

BASE = (
    "task: classification\noutput_dir: runs/x\nmodel: {name_or_path: m}\ndata: {dataset_name: d}\n"
)


def valid_keys() -> list[str]:
    keys = []
    for name, field in Config.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            keys += [f"{name}.{k}" for k in sub.model_fields]
        else:
            keys.append(name)
    return keys


KEYS = st.one_of(st.sampled_from(valid_keys()), st.text(min_size=1, max_size=30))
VALUES = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "no", "null", "[]", "{}", "[1, 2]", "'x'", "bf16", "epoch", "-1"]),
    st.text(max_size=20),
)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_any_override_gives_a_config_or_one_line(
    tmp_path: Path, pairs: list[tuple[str, str]]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    try:
        cfg = load_config(path, [f"{k}={v}" for k, v in pairs])
    except NluftError as err:
        assert "\n" not in str(err) and str(err)
        return
    assert isinstance(cfg, Config)


@SETTINGS
@given(st.text(max_size=300))
def test_any_yaml_text_gives_a_config_or_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except NluftError as err:
        assert "\n" not in str(err) and str(err)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_give_a_config_or_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except NluftError as err:
        assert "\n" not in str(err) and str(err)


@given(st.text(max_size=40))
def test_override_parsing_never_crashes(item: str) -> None:
    raw: dict = {"train": {"seed": 1}}
    try:
        apply_override(raw, item)
    except NluftError as err:
        assert "\n" not in str(err)
