"""Typed configuration: the schema, and loading with defaults <- YAML <- dotted overrides."""

from .load import ConfigError, build_config, flatten, load_config, save_config, to_dict
from .schema import (
    METHODS,
    Config,
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    TinyModelConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "METHODS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "build_config",
    "flatten",
    "load_config",
    "save_config",
    "to_dict",
]
