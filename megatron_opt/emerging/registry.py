"""The emerging-optimizer registry: one ``EmergingOptimizerEntry`` (plain data) per optimizer name.

Adding an optimizer is one class and one entry. ``config_to_kwargs`` maps every constructor keyword
from the config by hand, so a renamed field fails loudly instead of silently falling back to a
default (Megatron's signature walk drops ``decoupled_weight_decay`` that way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from megatron_opt.config import OptimizerConfig, ParamKey, ParamPredicate
from megatron_opt.emerging.adaptive_muon import TensorParallelAdaptiveMuon
from megatron_opt.emerging.muon import TensorParallelMuon
from megatron_opt.errors import ConfigError, config_error
from megatron_opt.ns_coefficients import get_supported_coefficient_types, validate_coefficient_type
from megatron_opt.optimizer_names import note_registered_emerging
from megatron_opt.parallel import ProcessGroupCollection


@dataclass
class EmergingOptimizerEntry:
    optimizer_cls: type
    config_to_kwargs: Callable[[OptimizerConfig, ProcessGroupCollection], dict]
    """Constructor keywords (everything but the param groups) from the config and process groups."""
    default_param_overrides: Callable[[OptimizerConfig], Dict[ParamKey, dict]]
    """Overrides merged under the user's: e.g. which parameters go to the scalar optimizer."""
    init_state_fn: Callable[[torch.optim.Optimizer], None]
    """Creates state for every parameter (checkpoint loading needs it before the first step)."""


_REGISTRY: Dict[str, EmergingOptimizerEntry] = {}


def register_emerging_optimizer(name: str, entry: EmergingOptimizerEntry) -> None:
    if name in _REGISTRY:
        raise config_error("emerging optimizer name", name, "a name not registered yet (have " + ", ".join(sorted(_REGISTRY)) + ")")
    _REGISTRY[name] = entry
    note_registered_emerging(name)


def get_emerging_optimizer_entry(name: str) -> EmergingOptimizerEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise config_error("optimizer", name, "one of the registered emerging optimizers: " + ", ".join(sorted(_REGISTRY))) from None


def emerging_optimizer_names() -> Tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


# ---- the muon family ---------------------------------------------------------------------------


def is_muon_excluded(p: torch.Tensor) -> bool:
    """What Muon must not touch: opted out, embedding/output, or not a matrix."""
    return (
        not getattr(p, "use_muon", True)
        or getattr(p, "is_embedding_or_output", False)
        or getattr(p, "is_embedding_or_output_parameter", False)
        or p.ndim != 2
    )


def muon_default_param_overrides(config: OptimizerConfig) -> Dict[ParamKey, dict]:
    return {ParamKey(predicate=ParamPredicate("muon_excluded", is_muon_excluded)): {"optimizer": config.muon_scalar_optimizer}}


def muon_config_to_kwargs(config: OptimizerConfig, pg_collection: ProcessGroupCollection) -> dict:
    if config.lr is None:
        raise ConfigError("lr=None is not allowed; expected a learning rate before the optimizer is built")
    return dict(
        lr=config.lr,
        momentum=config.muon_momentum,
        nesterov=config.muon_nesterov,
        weight_decay=config.weight_decay,
        use_decoupled_weight_decay=config.decoupled_weight_decay,
        split_qkv=config.muon_split_qkv,
        coefficient_type=config.muon_coefficient_type,
        custom_coefficients=config.muon_custom_coefficients,
        num_ns_steps=config.muon_num_ns_steps,
        scale_mode=config.muon_scale_mode,
        extra_scale_factor=config.muon_extra_scale_factor,
        fp32_matmul_prec=config.muon_fp32_matmul_prec,
        tp_mode=config.muon_tp_mode,
        tp_group=pg_collection.tp,
        ns_algorithm=config.muon_ns_algorithm,
        gram_restarts=config.muon_gram_ns_restarts,
        use_syrk=config.muon_use_syrk,
    )


def adaptive_muon_config_to_kwargs(config: OptimizerConfig, pg_collection: ProcessGroupCollection) -> dict:
    return dict(
        muon_config_to_kwargs(config, pg_collection),
        moment2_method=config.adaptive_muon_moment2_method,
        beta2=config.adaptive_muon_beta2,
        eps=config.adaptive_muon_eps,
    )


def init_muon_state(optimizer: torch.optim.Optimizer) -> None:
    optimizer.init_state()


register_emerging_optimizer(
    "muon", EmergingOptimizerEntry(TensorParallelMuon, muon_config_to_kwargs, muon_default_param_overrides, init_muon_state)
)
register_emerging_optimizer(
    "adaptive_muon",
    EmergingOptimizerEntry(TensorParallelAdaptiveMuon, adaptive_muon_config_to_kwargs, muon_default_param_overrides, init_muon_state),
)

__all__ = [
    "EmergingOptimizerEntry",
    "register_emerging_optimizer",
    "get_emerging_optimizer_entry",
    "emerging_optimizer_names",
    "get_supported_coefficient_types",
    "validate_coefficient_type",
    "is_muon_excluded",
    "muon_config_to_kwargs",
    "adaptive_muon_config_to_kwargs",
    "muon_default_param_overrides",
]
