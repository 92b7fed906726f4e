"""megatron_opt: Megatron-style optimizers (Adam/SGD, Muon family, Lion, SOAP) for TP/PP/DP training.

The public surface a Megatron-LM user reaches for: ``OptimizerConfig`` + ``ParamKey`` overrides in,
``get_megatron_optimizer`` to build, ``OptimizerParamScheduler`` for lr/wd.
"""

from megatron_opt.config import (
    OptimizerConfig,
    ParamGroupOverride,
    ParamKey,
    ParamPredicate,
    ParamWithNamePredicate,
    get_standard_config_overrides,
)
from megatron_opt.errors import ConfigError
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.grad_scaler import ConstantGradScaler, DynamicGradScaler, MegatronGradScaler, build_grad_scaler
from megatron_opt.optimizer import ChainedOptimizer, Float16Optimizer, FP32Optimizer, GradStatsGroups, MegatronOptimizer
from megatron_opt.parallel import ProcessGroupCollection
from megatron_opt.qk_clip import QKClipResult, QKClipTarget, clip_qk
from megatron_opt.scheduler import OptimizerParamScheduler
from megatron_opt.schedules import LRStyleOptions

__all__ = [
    "ChainedOptimizer",
    "ConfigError",
    "ConstantGradScaler",
    "DynamicGradScaler",
    "FP32Optimizer",
    "Float16Optimizer",
    "GradStatsGroups",
    "LRStyleOptions",
    "MegatronGradScaler",
    "MegatronOptimizer",
    "OptimizerConfig",
    "OptimizerParamScheduler",
    "ParamGroupOverride",
    "ParamKey",
    "ParamPredicate",
    "ParamWithNamePredicate",
    "ProcessGroupCollection",
    "QKClipResult",
    "QKClipTarget",
    "build_grad_scaler",
    "clip_qk",
    "get_megatron_optimizer",
    "get_standard_config_overrides",
]


def __getattr__(name: str):
    """Old top-level names still import, with one DeprecationWarning each (see megatron_opt/legacy.py)."""
    import importlib

    legacy = importlib.import_module("megatron_opt.legacy")
    if name in legacy.LEGACY_NAMES:
        return legacy.resolve(name)
    raise AttributeError(f"module 'megatron_opt' has no attribute {name!r}")
