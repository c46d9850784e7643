"""The configuration schema: frozen dataclasses, the only place defaults live.

One module per YAML section (`model` also holds `reference`), `schema` joins
them into `Config`, `load` reads YAML plus `--set a.b=value` overrides and
writes the resolved config, `docs` lists every key with its documentation.
Unknown keys, wrong types and impossible values raise `ConfigError` naming
the dotted key.
"""

from alignloop.config.base import ConfigError, require
from alignloop.config.data import DataConfig
from alignloop.config.docs import field_docs
from alignloop.config.generation import GenerationConfig
from alignloop.config.labeling import (
    AggregationConfig,
    HumanConfig,
    JudgeSpec,
    LabelingConfig,
    RoutingConfig,
    SelectionConfig,
)
from alignloop.config.load import (
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
    to_dict,
)
from alignloop.config.loop import GateConfig, LoopConfig, SlicesConfig
from alignloop.config.model import LoraConfig, ModelConfig, ReferenceConfig
from alignloop.config.report import ReportConfig
from alignloop.config.schema import Config
from alignloop.config.tracking import TrackingConfig
from alignloop.config.train import TrainConfig

__all__ = [
    "AggregationConfig", "Config", "ConfigError", "DataConfig", "GateConfig", "GenerationConfig",
    "HumanConfig", "JudgeSpec", "LabelingConfig", "LoopConfig", "LoraConfig", "ModelConfig",
    "ReferenceConfig", "ReportConfig", "RoutingConfig", "SelectionConfig", "SlicesConfig",
    "TrackingConfig", "TrainConfig", "apply_overrides", "config_from_dict", "dump_config", "field_docs",
    "load_config", "parse_override", "require", "to_dict",
]
