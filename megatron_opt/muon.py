"""Legacy import path ``megatron_opt.muon`` (Megatron's ``megatron/core/optimizer/muon.py``).

Thin shim: re-exports and renames only, each warning once with a pointer to the new name.
The library never imports this module.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from megatron_opt.config import OptimizerConfig, ParamGroupOverride, ParamKey
from megatron_opt.deprecation import warn_once
from megatron_opt.emerging.muon import TensorParallelMuon as _TensorParallelMuon
from megatron_opt.emerging.muon import muon_scale_factor
from megatron_opt.emerging.newton_schulz import newton_schulz, newton_schulz_tp
from megatron_opt.emerging.registry import get_supported_coefficient_types, validate_coefficient_type
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.optimizer import MegatronOptimizer
from megatron_opt.parallel import ProcessGroupCollection

warn_once("megatron_opt.muon", "megatron_opt.muon is deprecated; import from megatron_opt.emerging (TensorParallelMuon) and megatron_opt (get_megatron_optimizer)")

_OLD_KEYWORDS = {"momentum_beta": "momentum", "use_nesterov": "nesterov", "mode": "tp_mode"}


class TensorParallelMuon(_TensorParallelMuon):
    """Accepts the pre-refactor keywords ``momentum_beta``, ``use_nesterov`` and ``mode``."""

    def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        for old, new in _OLD_KEYWORDS.items():
            if old in kwargs:
                warn_once(f"TensorParallelMuon.{old}", f"TensorParallelMuon({old}=...) is deprecated; use {new}=...")
                kwargs[new] = kwargs.pop(old)
        super().__init__(params, *args, **kwargs)


def get_muon_scale_factor(size_out: int, size_in: int, mode: str = "spectral") -> float:
    """Old name of ``muon_scale_factor``."""
    warn_once("get_muon_scale_factor", "get_muon_scale_factor is deprecated; use megatron_opt.emerging.muon_scale_factor")
    return muon_scale_factor(size_out, size_in, mode)


def get_megatron_muon_optimizer(
    config: OptimizerConfig,
    model_chunks: Sequence[torch.nn.Module],
    config_overrides: Optional[Mapping[ParamKey, ParamGroupOverride]] = None,
    pg_collection: Optional[ProcessGroupCollection] = None,
    layer_wise_distributed_optimizer: bool = False,
    **_ignored: Any,
) -> MegatronOptimizer:
    """Old entry point: ``get_megatron_optimizer`` with the layer-wise flag as an argument."""
    warn_once("get_megatron_muon_optimizer", "get_megatron_muon_optimizer is deprecated; use megatron_opt.get_megatron_optimizer")
    if layer_wise_distributed_optimizer:
        config = config.replace(use_layer_wise_distributed_optimizer=True, use_distributed_optimizer=False)
    return get_megatron_optimizer(config, model_chunks, config_overrides, pg_collection)


__all__ = [
    "TensorParallelMuon",
    "get_megatron_muon_optimizer",
    "get_muon_scale_factor",
    "get_supported_coefficient_types",
    "newton_schulz",
    "newton_schulz_tp",
    "validate_coefficient_type",
]
