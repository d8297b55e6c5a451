"""The search space of a config: checked against the config schema, turned into Optuna's terms.

Any key of the config can be searched (`train.learning_rate`, `peft.r`, ...): the schema itself
says which keys exist, and every value the space can produce is validated as a whole config
before the first trial starts, so an impossible space fails in one line instead of in trial 7.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from pydantic import BaseModel

from nluft.config import Config, ParamSpec, SearchConfig, validate
from nluft.errors import NluftError

GRID_KINDS = ("choice", "int")
MAX_GRID = 10_000


def check_space(raw: dict[str, Any], search: SearchConfig, source: str) -> int:
    """Refuse unknown keys, impossible values and budgets; return the trial budget."""
    for key, spec in search.space.items():
        check_key(key, source)
        for value in candidate_values(spec):
            if spec.kind == "choice" and not isinstance(value, bool | int | float | str):
                raise NluftError(
                    f"{source}: search.space.{key}: choice values must be numbers, strings or "
                    f"booleans, got {value!r}"
                )
            try:
                validate(with_params(raw, {key: value}), source)
            except NluftError as err:
                reason = str(err).removeprefix(f"{source}: ")
                raise NluftError(
                    f"{source}: search.space.{key}: value {value!r} is not a valid config "
                    f"({reason})"
                ) from None
    return trial_budget(search, source)


def check_key(key: str, source: str) -> None:
    """The dotted key must name a value (not a section) of the config schema."""
    model: type[BaseModel] = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None or part in ("search", "output_dir"):
            valid = ", ".join(k for k in model.model_fields if k != "search")
            raise NluftError(
                f"{source}: search.space.{key}: no config key '{'.'.join(parts[: i + 1])}' "
                f"can be searched; valid keys here: {valid}"
            )
        sub = section_of(field.annotation)
        if i == len(parts) - 1:
            if sub is not None:
                raise NluftError(f"{source}: search.space.{key}: is a section; name a key in it")
            return
        if sub is None:
            raise NluftError(f"{source}: search.space.{key}: '{part}' is a value, not a section")
        model = sub


def section_of(annotation: Any) -> type[BaseModel] | None:
    """The section model behind a field's annotation (`X` or `X | None`), else None."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for item in candidates:
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def candidate_values(spec: ParamSpec) -> list[Any]:
    """The values to validate up front: every choice, the ends of a range."""
    if spec.kind in GRID_KINDS:
        return list(grid_values(spec))
    low, high = spec.values_of(spec.kind)
    return [low, high]


def grid_values(spec: ParamSpec) -> list[Any]:
    if spec.kind == "choice":
        return list(spec.choice or [])
    low, high = spec.values_of("int")
    return list(range(low, high + 1))


def grid_size(search: SearchConfig) -> int | None:
    """Number of points of the full grid, None when a key has a continuous range."""
    if any(spec.kind not in GRID_KINDS for spec in search.space.values()):
        return None
    return math.prod(len(grid_values(spec)) for spec in search.space.values())


def trial_budget(search: SearchConfig, source: str) -> int:
    """How many trials the study runs (finished or pruned ones count)."""
    size = grid_size(search)
    if search.method == "grid":
        if size is None:
            key = next(k for k, s in search.space.items() if s.kind not in GRID_KINDS)
            raise NluftError(
                f"{source}: search.space.{key}: method grid needs a finite set; "
                "use choice or int, or search.method=random/tpe"
            )
        if size > MAX_GRID:
            raise NluftError(f"{source}: search.space: the grid has {size} points (max {MAX_GRID})")
        if search.n_trials is not None and search.n_trials > size:
            raise NluftError(
                f"{source}: search.n_trials: {search.n_trials} exceeds the grid's {size} points; "
                "lower it or leave it unset"
            )
        return search.n_trials or size
    if search.n_trials is None:
        raise NluftError(f"{source}: search.n_trials: required for method {search.method}")
    return search.n_trials


def distributions(search: SearchConfig) -> dict[str, Any]:
    """Optuna distributions of the space, keyed by the dotted config key."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for key, spec in search.space.items():
        if spec.kind == "choice":
            out[key] = CategoricalDistribution(spec.choice or [])
        elif spec.kind == "int":
            out[key] = IntDistribution(*spec.values_of("int"))
        else:
            low, high = spec.values_of(spec.kind)
            out[key] = FloatDistribution(low, high, log=spec.kind == "loguniform")
    return out


def grid(search: SearchConfig) -> dict[str, list[Any]]:
    return {key: grid_values(spec) for key, spec in search.space.items()}


def with_params(raw: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw config without `search`, with each dotted key set to its value."""
    out = copy.deepcopy(raw)
    out.pop("search", None)
    for key, value in params.items():
        node = out
        *sections, name = key.split(".")
        for part in sections:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # e.g. `peft: null`: the key makes it a section
                child = node[part] = {}
            node = child
        node[name] = value
    return out
