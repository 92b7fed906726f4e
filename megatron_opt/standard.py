"""Adam/AdamW/SGD and the choice of implementation behind them.

``auto`` picks the fastest that is really there: Transformer Engine FusedAdam (CUDA and importable)
→ apex FusedAdam (CUDA and importable) → torch fused kernels (when torch supports the device) →
torch foreach; with skip-step protection on, torch fused goes first (``pick_auto_backend``). Forcing a backend that is not available is a ``ConfigError``, never a silent fallback.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from megatron_opt.config import OptimizerConfig
from megatron_opt.errors import ConfigError

logger = logging.getLogger("megatron_opt")


@dataclass(frozen=True)
class BuiltStandardOptimizer:
    optimizer: torch.optim.Optimizer
    backend: str


def _params_device(groups: Sequence[Dict[str, Any]]) -> torch.device:
    for group in groups:
        for p in group["params"]:
            return p.device
    return torch.device("cpu")


def _import_optional(module: str, attr: str) -> Optional[Callable[..., torch.optim.Optimizer]]:
    """The class if its package imports cleanly, else None (optional heavy backends)."""
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception:  # noqa: BLE001 - any import failure means "not available here"
        return None


def _te_fused_adam() -> Optional[Callable[..., torch.optim.Optimizer]]:
    return _import_optional("transformer_engine.pytorch.optimizers", "FusedAdam")


def _apex_fused_adam() -> Optional[Callable[..., torch.optim.Optimizer]]:
    return _import_optional("apex.optimizers", "FusedAdam")


def _torch_fused_supported(device: torch.device) -> bool:
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return device.type in _get_fused_kernels_supported_devices()


def available_backends(name: str, device: torch.device) -> List[str]:
    """Backends that would work for ``name`` on ``device``, fastest first."""
    backends = []
    if name == "adam" and device.type == "cuda":
        if _te_fused_adam() is not None:
            backends.append("te")
        if _apex_fused_adam() is not None:
            backends.append("apex")
    if _torch_fused_supported(device):
        backends.append("torch_fused")
    backends.append("torch_foreach")
    return backends


def pick_auto_backend(available: Sequence[str], skip_on_device: bool) -> str:
    """``auto``: the fastest available, except that a run with skip-step protection prefers torch's
    fused kernels over TE/apex FusedAdam: they take the on-device skip decision as ``found_inf``, so
    the step needs no host read of it (docs/skip_step.md); TE/apex would read it once per step."""
    if skip_on_device and "torch_fused" in available:
        return "torch_fused"
    return available[0]


def choose_backend(name: str, config: OptimizerConfig, device: torch.device) -> str:
    available = available_backends(name, device)
    if config.standard_backend == "auto":
        backend = pick_auto_backend(available, config.skip_step_sigma is not None)
        if backend != available[0]:
            logger.info("megatron_opt: %s uses torch_fused rather than %s: skip_step_sigma is set and torch's fused "
                        "kernels take the skip decision on the device", name, available[0])
        return backend
    if config.standard_backend not in available:
        raise ConfigError(
            f"standard_backend={config.standard_backend!r} is not allowed for optimizer {name!r} on {device.type}; "
            f"expected one of auto, {', '.join(available)} (the others are not installed or do not support this device)"
        )
    return config.standard_backend


def build_standard_optimizer(name: str, groups: Sequence[Dict[str, Any]], config: OptimizerConfig) -> BuiltStandardOptimizer:
    """Build adam (AdamW with decoupled decay, else Adam with L2) or sgd over ``groups``."""
    device = _params_device(groups)
    backend = choose_backend(name, config, device)
    # The group dicts are handed over as they are (not copied): the scheduler writes lr and
    # weight_decay into them, and torch keeps our bookkeeping keys alongside its own.
    groups = list(groups)
    if name == "adam":
        common = dict(lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, weight_decay=config.weight_decay)
        if backend == "te":
            opt = _te_fused_adam()(groups, adam_w_mode=config.decoupled_weight_decay, **common)
        elif backend == "apex":
            opt = _apex_fused_adam()(groups, adam_w_mode=config.decoupled_weight_decay, **common)
        else:
            cls = torch.optim.AdamW if config.decoupled_weight_decay else torch.optim.Adam
            opt = cls(groups, **common, **_torch_flags(backend))
    elif name == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.sgd_momentum, weight_decay=config.weight_decay, **_torch_flags(backend))
    else:
        raise ConfigError(f"optimizer={name!r} is not allowed here; expected adam or sgd")
    logger.info("megatron_opt: %s uses the %s backend", name, backend)
    return BuiltStandardOptimizer(opt, backend)


def _torch_flags(backend: str) -> Dict[str, bool]:
    return {"fused": True} if backend == "torch_fused" else {"foreach": True}
