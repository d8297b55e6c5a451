"""Reading a config: YAML file, `key=value` overrides, validation with one-line errors, dumping."""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from nluft.config.schema import Config
from nluft.errors import NluftError
from nluft.redaction import redact


def load_config(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read a YAML config, apply `key=value` overrides, validate, and check that files exist."""
    source = str(path)
    raw = read_yaml(source)
    for item in overrides:
        apply_override(raw, item)
    cfg = validate(raw, source)
    check_files(cfg)
    return cfg


def read_yaml(path: str) -> dict[str, Any]:
    """Parse a YAML mapping with the safe loader; errors name the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NluftError(f"{path}: config file not found") from None
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise NluftError(f"{path}: cannot read config as UTF-8 text ({err})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise NluftError(f"{where}: YAML syntax error: {problem}") from None
    if raw is None:
        raise NluftError(f"{path}: config file is empty; see configs/ for examples")
    if not isinstance(raw, dict):
        raise NluftError(f"{path}: config must be a YAML mapping of keys, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set one `dotted.key=value` override; the value is parsed as YAML (`3`, `true`, `[a, b]`)."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise NluftError(f"override {item!r}: expected key=value, e.g. train.learning_rate=3e-5")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise NluftError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def validate(raw: dict[str, Any], source: str) -> Config:
    """Build the typed config; the first problem becomes a one-line NluftError."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise NluftError(describe_error(err, source)) from None


def describe_error(err: ValidationError, source: str) -> str:
    """Turn pydantic's first error into one actionable line."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"] if not isinstance(part, int)]
    key = ".".join(loc)
    key = key if key.isprintable() else repr(key)[1:-1]  # a newline in a key stays one line
    kind = first["type"]
    if kind == "extra_forbidden":
        section = section_model(loc[:-1])
        hint = closest_key(loc[-1], section, loc[:-1])
        return f"{source}: unknown key '{key}'{hint}"
    if kind == "missing":
        return f"{source}: missing required key '{key}'"
    if kind == "value_error":
        where = f"key '{key}': " if key.startswith("search.") else ""  # others name their keys
        return f"{source}: {where}{first['msg'].removeprefix('Value error, ')}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: key '{key}': {first['msg']}{shown}"


def section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        # An optional section (`peft: PeftConfig | None`) is its model.
        options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        if not (isinstance(options[0], type) and issubclass(options[0], BaseModel)):
            return None
        model = options[0]
    return model


def closest_key(name: str, section: type[BaseModel] | None, prefix: list[str]) -> str:
    if section is None:
        return ""
    valid = list(section.model_fields)
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if not match:
        # The key may belong to another section, e.g. `learning_rate` at the top level.
        for field, info in section.model_fields.items():
            sub = info.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel) and name in sub.model_fields:
                return f"; did you mean '{'.'.join([*prefix, field, name])}'?"
        return f"; valid keys here: {', '.join(valid)}"
    return f"; did you mean '{'.'.join([*prefix, match[0]])}'?"


def check_files(cfg: Config) -> None:
    """Every data file named in the config must exist before any work starts."""
    for key in ("train_file", "validation_file", "test_file"):
        value = getattr(cfg.data, key)
        if value and not (Path(value).is_file() or Path(value).is_dir()):  # brat: a directory
            raise NluftError(
                f"data.{key}: file not found: {value} "
                "(paths are relative to the directory you run nluft from)"
            )


def to_yaml(cfg: Config) -> str:
    """The fully resolved config, as saved in the run directory, with any secret redacted."""
    return yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False)
