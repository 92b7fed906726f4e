"""Registry entries for ``lion`` and ``soap``; ``register_lion_and_soap()`` adds them.

Every constructor keyword is mapped from the config by hand. Two points on purpose:

* Lion gets ``betas=(lion_beta1, lion_beta2)``. Megatron's emerging path passes the Adam betas to
  Lion; here ``--optimizer lion`` and Lion as Muon's scalar optimizer use the same Lion settings.
* ``decoupled_weight_decay`` reaches both optimizers (Megatron's signature walk never finds it).

The registry is imported inside the functions, so this module imports before the registry exists.
"""

from __future__ import annotations

from typing import Dict

import torch

from megatron_opt.config import OptimizerConfig, ParamKey, ParamPredicate
from megatron_opt.emerging.lion import Lion
from megatron_opt.emerging.soap import SOAP
from megatron_opt.errors import ConfigError
from megatron_opt.parallel import ProcessGroupCollection


def _required_lr(config: OptimizerConfig) -> float:
    if config.lr is None:
        raise ConfigError("lr=None is not allowed; expected a learning rate before the optimizer is built")
    return config.lr


# ---- lion ----------------------------------------------------------------------------------------


def lion_config_to_kwargs(config: OptimizerConfig, pg_collection: ProcessGroupCollection) -> dict:
    return dict(
        lr=_required_lr(config),
        betas=(config.lion_beta1, config.lion_beta2),
        weight_decay=config.weight_decay,
        use_decoupled_weight_decay=config.decoupled_weight_decay,
    )


def lion_default_param_overrides(config: OptimizerConfig) -> Dict[ParamKey, dict]:
    """Lion handles every shape, so nothing is routed elsewhere."""
    return {}


# ---- soap ----------------------------------------------------------------------------------------


def is_soap_excluded(p: torch.Tensor) -> bool:
    """What SOAP does not precondition: embeddings/output layer and anything that is not a matrix."""
    return getattr(p, "is_embedding_or_output", False) or getattr(p, "is_embedding_or_output_parameter", False) or p.dim() != 2


def soap_config_to_kwargs(config: OptimizerConfig, pg_collection: ProcessGroupCollection) -> dict:
    return dict(
        lr=_required_lr(config),
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        shampoo_beta=config.soap_shampoo_beta,
        precondition_frequency=config.soap_precondition_frequency,
        max_update_rms=config.soap_max_update_rms,
        correct_bias=config.soap_correct_bias,
        weight_decay=config.weight_decay,
        use_decoupled_weight_decay=config.decoupled_weight_decay,
    )


def soap_default_param_overrides(config: OptimizerConfig) -> Dict[ParamKey, dict]:
    return {ParamKey(predicate=ParamPredicate("soap_excluded", is_soap_excluded)): {"optimizer": config.muon_scalar_optimizer}}


# ---- registration --------------------------------------------------------------------------------


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    optimizer.init_state()


def register_lion_and_soap() -> None:
    """Register ``lion`` and ``soap``; calling it again is a no-op for names already holding these classes."""
    from megatron_opt.emerging.registry import (
        EmergingOptimizerEntry,
        emerging_optimizer_names,
        get_emerging_optimizer_entry,
        register_emerging_optimizer,
    )

    entries = {
        "lion": EmergingOptimizerEntry(Lion, lion_config_to_kwargs, lion_default_param_overrides, init_optimizer_state),
        "soap": EmergingOptimizerEntry(SOAP, soap_config_to_kwargs, soap_default_param_overrides, init_optimizer_state),
    }
    for name, entry in entries.items():
        if name in emerging_optimizer_names() and get_emerging_optimizer_entry(name).optimizer_cls is entry.optimizer_cls:
            continue
        register_emerging_optimizer(name, entry)  # raises if the name holds a different optimizer


__all__ = [
    "register_lion_and_soap",
    "lion_config_to_kwargs",
    "lion_default_param_overrides",
    "soap_config_to_kwargs",
    "soap_default_param_overrides",
    "is_soap_excluded",
]
