"""megatron_opt: Megatron-style optimizers (Adam/SGD, Muon family, ...) for TP/PP/DP training."""

from megatron_opt.config import (
    OptimizerConfig,
    ParamGroupOverride,
    ParamKey,
    ParamPredicate,
    ParamWithNamePredicate,
    get_standard_config_overrides,
)
from megatron_opt.errors import ConfigError
from megatron_opt.parallel import ProcessGroupCollection

__all__ = [
    "ConfigError",
    "OptimizerConfig",
    "ParamGroupOverride",
    "ParamKey",
    "ParamPredicate",
    "ParamWithNamePredicate",
    "ProcessGroupCollection",
    "get_standard_config_overrides",
]
