"""The job's configuration: typed sections, composed and cross-checked in `JobConfig`,
loaded from YAML plus `--set` overrides with errors that name the field."""

from internvl_batch.config.job import (
    InputConfig,
    JobConfig,
    OutputConfig,
    PreprocessConfig,
    TaskConfig,
)
from internvl_batch.config.loader import ConfigError, load_config
from internvl_batch.config.model import ModelConfig, SamplingConfig
from internvl_batch.config.runtime import AdvancedRuntimeConfig, RuntimeConfig

__all__ = [
    "AdvancedRuntimeConfig",
    "ConfigError",
    "InputConfig",
    "JobConfig",
    "ModelConfig",
    "OutputConfig",
    "PreprocessConfig",
    "RuntimeConfig",
    "SamplingConfig",
    "TaskConfig",
    "load_config",
]
