"""Typed run config: one YAML file plus `key=value` overrides, validated before anything runs.

This package imports no torch: `nluft train --dry-run` and config errors stay fast.
`schema.py` holds the sections, `loading.py` reads and validates YAML and overrides, `plan.py`
computes the derived settings.
"""

from nluft.config.loading import (
    apply_override,
    check_files,
    load_config,
    read_yaml,
    to_yaml,
    validate,
)
from nluft.config.plan import Plan, build_plan
from nluft.config.schema import (
    STRATEGY_NAMES,
    ClassificationConfig,
    Config,
    DataConfig,
    DistillConfig,
    ModelConfig,
    NerConfig,
    ParamSpec,
    PeftConfig,
    QAConfig,
    RelationConfig,
    SearchConfig,
    Section,
    StrategyConfig,
    TrackingConfig,
    TrainConfig,
    WandbConfig,
)

__all__ = [
    "STRATEGY_NAMES",
    "ClassificationConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "ModelConfig",
    "NerConfig",
    "ParamSpec",
    "PeftConfig",
    "Plan",
    "QAConfig",
    "RelationConfig",
    "SearchConfig",
    "Section",
    "StrategyConfig",
    "TrackingConfig",
    "TrainConfig",
    "WandbConfig",
    "apply_override",
    "build_plan",
    "check_files",
    "load_config",
    "read_yaml",
    "to_yaml",
    "validate",
]
